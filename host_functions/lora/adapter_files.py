"""The two adapter file formats: llama.cpp's GGUF adapters and PEFT folders, read into matrices by
GGUF weight name. What the matrices must be for a model is checked by lora.adapter.

A GGUF adapter holds `blk.{i}.{name}.weight.lora_a` / `.lora_b` tensors and `adapter.lora.alpha`. A
PEFT folder holds adapter_config.json (rank, alpha, options) and adapter_model.safetensors, under
Hugging Face module names (`...layers.3.self_attn.q_proj.lora_A.weight`), which the structure table
maps to GGUF names (arch.layout: Matrix.peft). For the architectures whose Q and K rows llama.cpp's
converter permutes (its rope layout; `permuted_qk`), the B matrices of q and k are permuted the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import weight_name
from host_functions.errors import AdapterError, ModelFormatError
from host_functions.formats.gguf_file import GGUFFile
from host_functions.formats.quants import dequantize

_PEFT_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")
_PEFT_FILES = {"adapter_config.json": "", "adapter_model.safetensors": " (pickled adapter_model.bin is not read)"}


@dataclass
class AdapterFile:
    """An adapter's content as read: its digest, alpha, and the halves of each pair ("a", "b") by weight name."""

    digest: str
    alpha: float
    halves: dict[str, dict[str, np.ndarray]]


def open_gguf_adapter(path: Path) -> GGUFFile:
    """The GGUF file at `path` if it is a LoRA adapter; AdapterError otherwise."""
    try:
        gguf = GGUFFile(path)
    except ModelFormatError as exc:
        raise AdapterError(f"LoRA adapter {path.name}: {exc}") from None
    kind, adapter_type = gguf.get("general.type"), gguf.get("adapter.type")
    if kind != "adapter" or adapter_type != "lora":
        raise AdapterError(f"LoRA adapter {path.name}: not a LoRA adapter (general.type={kind!r}, "
                           f"adapter.type={adapter_type!r})")
    return gguf


def check_peft_folder(folder: Path) -> None:
    """AdapterError unless the folder has a PEFT adapter's two files."""
    for needed, note in _PEFT_FILES.items():
        if not (folder / needed).is_file():
            raise AdapterError(f"LoRA adapter {folder.name}: a PEFT folder needs {needed}{note}")


def read_gguf_adapter(path: Path, config: ModelConfig) -> AdapterFile:
    """A GGUF adapter file made for `config`'s architecture; raises AdapterError."""
    gguf = open_gguf_adapter(path)
    arch = gguf.get("general.architecture")
    if arch != config.arch:
        raise AdapterError(f"LoRA adapter {path.name}: made for architecture {arch!r}, the model is {config.arch!r}")
    alpha = _alpha(path.name, gguf.get("adapter.lora.alpha", 0.0))
    halves: dict[str, dict[str, np.ndarray]] = {}
    for tname, raw in gguf.tensors.items():
        base, dot, half = tname.rpartition(".")
        if not dot or half not in ("lora_a", "lora_b"):
            raise AdapterError(f"LoRA adapter {path.name}: tensor {tname} is not a lora_a/lora_b tensor")
        halves.setdefault(base, {})[half[-1]] = dequantize(raw)
    return AdapterFile(_file_digest(path), alpha, halves)


def read_peft_adapter(folder: Path, config: ModelConfig) -> AdapterFile:
    """A PEFT LoRA folder, its matrices under the GGUF names of `config`'s architecture; raises AdapterError."""
    name = folder.name
    check_peft_folder(folder)
    cfg_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    peft = _peft_config(name, cfg_path)
    rank = peft.get("r")
    alpha = _alpha(name, peft.get("lora_alpha", rank))
    if peft.get("use_rslora") and isinstance(rank, int) and rank > 0:
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r): the same factor over r
    layout = config.layout
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _read_safetensors(name, weights_path).items():
        m = _PEFT_KEY.search(key)
        matrix = None if m is None else layout.matrix_by_peft(m[2])
        if m is None or matrix is None or matrix.name not in layout.lora_targets:
            raise AdapterError(f"LoRA adapter {name}: tensor {key} is not a LoRA pair of an attention or FFN "
                               f"projection ({', '.join(layout.lora_peft_modules)})")
        half = m[3].lower()
        if half == "b" and layout.permuted_qk and matrix.holds in (("q",), ("k",)):
            value = _permuted_rows(value, config.n_head if matrix.holds == ("q",) else config.n_head_kv)
        halves.setdefault(weight_name(int(m[1]), matrix.name), {})[half] = value
    return AdapterFile(_file_digest(cfg_path, weights_path), alpha, halves)


def _peft_config(name: str, path: Path) -> dict[str, object]:
    """adapter_config.json, refused unless it describes a plain LoRA adapter."""
    try:
        peft = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"LoRA adapter {name}: adapter_config.json is not JSON: {exc}") from None
    if not isinstance(peft, dict) or str(peft.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"LoRA adapter {name}: adapter_config.json is not a LoRA config")
    for unsupported in ("use_dora", "fan_in_fan_out"):
        if peft.get(unsupported):
            raise AdapterError(f"LoRA adapter {name}: {unsupported} adapters are not supported")
    if peft.get("modules_to_save"):
        raise AdapterError(f"LoRA adapter {name}: modules_to_save (fully replaced weights) is not supported")
    return peft


def _read_safetensors(name: str, path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return {k: np.asarray(v, np.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise AdapterError(f"LoRA adapter {name}: adapter_model.safetensors is unreadable: {exc}") from None


def _permuted_rows(b: np.ndarray, heads: int) -> np.ndarray:
    """B's rows reordered as llama.cpp's converter reorders a Q or K weight's rows (per head, the two
    rope halves interleaved); a matrix of the wrong shape is left for lora.adapter to report."""
    if b.ndim != 2 or b.shape[0] % (2 * heads):
        return b
    return np.ascontiguousarray(b.reshape(heads, 2, b.shape[0] // heads // 2, b.shape[1]).swapaxes(1, 2)
                                .reshape(b.shape))


def _alpha(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise AdapterError(f"LoRA adapter {name}: alpha must be a finite number >= 0, got {value!r}")
    return float(value)


def _file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
