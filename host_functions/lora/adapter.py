"""LoRA adapters: load llama.cpp's GGUF adapters and PEFT folders, check them against a model.

An adapter is a set of low-rank pairs, one per targeted base weight (the architecture's
`lora_targets` in arch.layout: for llama and gemma3 the attention q, k, v, output and FFN gate, up,
down): `lora_a` (rank, n_in) and `lora_b` (n_out, rank). The effective weight is
`W + scale * alpha / rank * (B @ A)`, which llama.cpp computes unmerged as `W x + s * B (A x)`, with
rank the pair's own (B's columns) and no alpha division when alpha is 0. Pairs are kept as float32
NumPy arrays: at rank <= 64 they are small next to the base weights, which are never modified.

PEFT names (`...layers.3.self_attn.q_proj.lora_A.weight`) map to GGUF names (`blk.3.attn_q.weight`)
through the structure table (Matrix.peft); for the architectures whose Q and K rows llama.cpp's
converter permutes (its rope layout; `permuted_qk`), the B matrices of q and k are permuted the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import weight_name
from host_functions.errors import AdapterError, ModelFormatError
from host_functions.formats.gguf_file import GGUFFile
from host_functions.formats.quants import dequantize

MAX_RANK = 64
_PEFT_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")
_TARGET_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")


@dataclass(frozen=True)
class LoraPair:
    """The low-rank update of one base weight: a (rank, n_in), b (n_out, rank), float32."""

    a: np.ndarray
    b: np.ndarray
    alpha: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def scale(self, user_scale: float) -> float:
        """llama.cpp's factor on B (A x): user scale * alpha / rank (just the user scale if alpha is 0)."""
        return user_scale * self.alpha / self.rank if self.alpha else user_scale

    @property
    def nbytes(self) -> int:
        return self.a.nbytes + self.b.nbytes


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """A loaded adapter: its name, content digest (identity) and pairs by base weight name."""

    name: str
    digest: str
    pairs: Mapping[str, LoraPair] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pairs.values())

    @property
    def max_rank(self) -> int:
        return max(p.rank for p in self.pairs.values())


def load_adapter(path: str | Path, config: ModelConfig) -> LoraAdapter:
    """Load a GGUF adapter file or a PEFT folder and check it against `config`.

    Raises AdapterError naming the adapter (and the tensor) when the file is not an adapter, was made
    for another architecture or size, targets a weight the model lacks or Realm does not adapt, has
    mismatched shapes, a rank outside 1..64, or a non-finite or negative alpha.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        name, digest, pairs = path.name, *_read_peft(path, config)
    elif path.is_file():
        name, digest, pairs = path.name, *_read_gguf(path, config)
    else:
        raise AdapterError(f"LoRA adapter {path}: no such file or folder")
    if not pairs:
        raise AdapterError(f"LoRA adapter {name}: holds no LoRA tensors")
    for target, pair in pairs.items():
        _check_pair(name, target, pair, config)
    return LoraAdapter(name, digest, pairs)


def check_adapter_source(path: str | Path) -> Path:
    """The resolved path if it looks like a LoRA adapter (a GGUF adapter file, or a PEFT folder with its
    two files), without loading its tensors; AdapterError otherwise. Shapes are checked when a model
    loads it."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        for needed in ("adapter_config.json", "adapter_model.safetensors"):
            if not (path / needed).is_file():
                raise AdapterError(f"LoRA adapter {path.name}: a PEFT folder needs {needed}")
        return path
    if not path.is_file():
        raise AdapterError(f"LoRA adapter {path}: no such file or folder")
    _open_gguf_adapter(path)
    return path


def _open_gguf_adapter(path: Path) -> GGUFFile:
    try:
        gguf = GGUFFile(path)
    except ModelFormatError as exc:
        raise AdapterError(f"LoRA adapter {path.name}: {exc}") from None
    kind, adapter_type = gguf.get("general.type"), gguf.get("adapter.type")
    if kind != "adapter" or adapter_type != "lora":
        raise AdapterError(f"LoRA adapter {path.name}: not a LoRA adapter (general.type={kind!r}, "
                           f"adapter.type={adapter_type!r})")
    return gguf


def _read_gguf(path: Path, config: ModelConfig) -> tuple[str, dict[str, LoraPair]]:
    gguf = _open_gguf_adapter(path)
    _check_arch(path.name, gguf.get("general.architecture"), config)
    alpha = _alpha(path.name, gguf.get("adapter.lora.alpha", 0.0))
    halves: dict[str, dict[str, np.ndarray]] = {}
    for tname, raw in gguf.tensors.items():
        base, dot, half = tname.rpartition(".")
        if not dot or half not in ("lora_a", "lora_b"):
            raise AdapterError(f"LoRA adapter {path.name}: tensor {tname} is not a lora_a/lora_b tensor")
        halves.setdefault(base, {})[half[-1]] = dequantize(raw)
    return _file_digest(path), {base: _pair(path.name, base, h.get("a"), h.get("b"), alpha) for base, h in halves.items()}


def _read_peft(folder: Path, config: ModelConfig) -> tuple[str, dict[str, LoraPair]]:
    name = folder.name
    cfg_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.is_file():
        raise AdapterError(f"LoRA adapter {name}: a PEFT folder needs adapter_config.json")
    if not weights_path.is_file():
        raise AdapterError(f"LoRA adapter {name}: a PEFT folder needs adapter_model.safetensors "
                           "(pickled adapter_model.bin is not read)")
    try:
        peft = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"LoRA adapter {name}: adapter_config.json is not JSON: {exc}") from None
    if not isinstance(peft, dict) or str(peft.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"LoRA adapter {name}: adapter_config.json is not a LoRA config")
    for unsupported in ("use_dora", "fan_in_fan_out"):
        if peft.get(unsupported):
            raise AdapterError(f"LoRA adapter {name}: {unsupported} adapters are not supported")
    if peft.get("modules_to_save"):
        raise AdapterError(f"LoRA adapter {name}: modules_to_save (fully replaced weights) is not supported")
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
    pairs = {base: _pair(name, base, h.get("a"), h.get("b"), alpha) for base, h in halves.items()}
    return _file_digest(cfg_path, weights_path), pairs


def _read_safetensors(name: str, path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return {k: np.asarray(v, np.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise AdapterError(f"LoRA adapter {name}: adapter_model.safetensors is unreadable: {exc}") from None


def _permuted_rows(b: np.ndarray, heads: int) -> np.ndarray:
    """B's rows reordered as llama.cpp's converter reorders a Q or K weight's rows (per head, the two
    rope halves interleaved); a matrix of the wrong shape is left for _check_pair to report."""
    if b.ndim != 2 or b.shape[0] % (2 * heads):
        return b
    return np.ascontiguousarray(b.reshape(heads, 2, b.shape[0] // heads // 2, b.shape[1]).swapaxes(1, 2)
                                .reshape(b.shape))


def _pair(name: str, base: str, a: np.ndarray | None, b: np.ndarray | None, alpha: float) -> LoraPair:
    if a is None or b is None:
        raise AdapterError(f"LoRA adapter {name}: {base} has lora_{'a' if a is None else 'b'} missing")
    if a.ndim != 2 or b.ndim != 2:
        raise AdapterError(f"LoRA adapter {name}: {base} lora tensors must be matrices, got {a.shape} and {b.shape}")
    return LoraPair(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), alpha)


def _check_arch(name: str, arch: object, config: ModelConfig) -> None:
    if arch != config.arch:
        raise AdapterError(f"LoRA adapter {name}: made for architecture {arch!r}, the model is {config.arch!r}")


def _check_pair(name: str, base: str, pair: LoraPair, config: ModelConfig) -> None:
    m = _TARGET_NAME.match(base)
    expected = config.expected_tensors()
    targets = config.layout.lora_targets
    if m is None or m[2] not in targets or int(m[1]) >= config.n_layers:
        where = "the model has no such weight" if base not in expected else "Realm adapts only " + ", ".join(targets)
        raise AdapterError(f"LoRA adapter {name}: targets {base}: {where}")
    n_out, n_in = expected[base]
    rank = pair.a.shape[0]
    if not 1 <= rank <= MAX_RANK:
        raise AdapterError(f"LoRA adapter {name}: {base} has rank {rank}, supported ranks are 1..{MAX_RANK}")
    if pair.a.shape != (rank, n_in) or pair.b.shape != (n_out, rank):
        raise AdapterError(f"LoRA adapter {name}: {base} lora_a {pair.a.shape} / lora_b {pair.b.shape} do not fit "
                           f"the weight's {(n_out, n_in)} (expected ({rank}, {n_in}) and ({n_out}, {rank}))")
    if not (np.isfinite(pair.a).all() and np.isfinite(pair.b).all()):
        raise AdapterError(f"LoRA adapter {name}: {base} holds NaN or infinite values")


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
