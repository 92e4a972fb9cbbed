"""LoRA adapters: what one is, and loading one for a model (checked against the model's structure).

An adapter is a set of low-rank pairs, one per targeted base weight (the architecture's
`lora_targets` in arch.layout: for llama and gemma3 the attention q, k, v, output and FFN gate, up,
down): `lora_a` (rank, n_in) and `lora_b` (n_out, rank). The effective weight is
`W + scale * alpha / rank * (B @ A)`, which llama.cpp computes unmerged as `W x + s * B (A x)`, with
rank the pair's own (B's columns) and no alpha division when alpha is 0. Pairs are kept as float32
NumPy arrays: at rank <= 64 they are small next to the base weights, which are never modified.
The file formats (GGUF, PEFT folders) are read by lora.adapter_files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.errors import AdapterError
from host_functions.lora.adapter_files import (
    check_peft_folder,
    open_gguf_adapter,
    read_gguf_adapter,
    read_peft_adapter,
)

MAX_RANK = 64
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
        read = read_peft_adapter(path, config)
    elif path.is_file():
        read = read_gguf_adapter(path, config)
    else:
        raise AdapterError(f"LoRA adapter {path}: no such file or folder")
    name = path.name
    pairs = {base: _pair(name, base, h.get("a"), h.get("b"), read.alpha) for base, h in read.halves.items()}
    if not pairs:
        raise AdapterError(f"LoRA adapter {name}: holds no LoRA tensors")
    for target, pair in pairs.items():
        _check_pair(name, target, pair, config)
    return LoraAdapter(name, read.digest, pairs)


def check_adapter_source(path: str | Path) -> Path:
    """The resolved path if it looks like a LoRA adapter (a GGUF adapter file, or a PEFT folder with its
    two files), without loading its tensors; AdapterError otherwise. Shapes are checked when a model
    loads it."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        check_peft_folder(path)
        return path
    if not path.is_file():
        raise AdapterError(f"LoRA adapter {path}: no such file or folder")
    open_gguf_adapter(path)
    return path


def _pair(name: str, base: str, a: np.ndarray | None, b: np.ndarray | None, alpha: float) -> LoraPair:
    if a is None or b is None:
        raise AdapterError(f"LoRA adapter {name}: {base} has lora_{'a' if a is None else 'b'} missing")
    if a.ndim != 2 or b.ndim != 2:
        raise AdapterError(f"LoRA adapter {name}: {base} lora tensors must be matrices, got {a.shape} and {b.shape}")
    return LoraPair(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), alpha)


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
