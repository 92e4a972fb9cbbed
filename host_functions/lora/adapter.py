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

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.errors import AdapterError
from host_functions.lora.adapter_files import MAX_RANK, Shapes, check_gguf_adapter, check_peft_folder, open_adapter

MAX_ALPHA_FACTOR = 1000.0  # alpha / rank (alpha / sqrt(rank) with rsLoRA): far beyond any trained adapter
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


def load_adapter(path: str | Path, config: ModelConfig, name: str | None = None,
                 max_bytes: int | None = None) -> LoraAdapter:
    """Load a GGUF adapter file or a PEFT folder and check it against `config`.

    What the files declare is checked before anything is decoded. Raises AdapterError naming the
    adapter `name` (default: the file's name) and the tensor when the file is not an adapter, was made
    for another architecture or size, targets a weight the model lacks or Realm does not adapt, has
    mismatched shapes, a rank outside 1..64, a negative or non-finite alpha or one that makes
    alpha / rank larger than MAX_ALPHA_FACTOR, pairs larger than `max_bytes` as float32, or
    non-finite values.
    """
    path = Path(path).expanduser()
    name = path.name if name is None else name
    if not path.exists() and not path.is_symlink():
        raise AdapterError("no such file or folder", name)
    with open_adapter(path, config, name) as declared:
        _check_declared(name, declared.shapes, declared.alpha, config)
        nbytes = 4 * sum(math.prod(shape) for halves in declared.shapes.values() for shape in halves.values())
        if max_bytes is not None and nbytes > max_bytes:
            raise AdapterError(f"its pairs take {nbytes} bytes, more than the adapter memory budget of "
                               f"{max_bytes} bytes", name)
        digest, matrices = declared.digest(), declared.matrices()
    pairs = {base: LoraPair(np.ascontiguousarray(h["a"], np.float32), np.ascontiguousarray(h["b"], np.float32),
                            declared.alpha) for base, h in matrices.items()}
    for base, pair in pairs.items():
        if not (np.isfinite(pair.a).all() and np.isfinite(pair.b).all()):
            raise AdapterError(f"{base} holds NaN or infinite values", name)
    return LoraAdapter(name, digest, pairs)


def check_adapter_source(path: str | Path) -> Path:
    """The resolved path if it looks like a LoRA adapter (a GGUF adapter file, or a PEFT folder with a
    valid config and safetensors header), without decoding its tensors; AdapterError naming the path
    as given otherwise. Shapes are checked when a model loads it."""
    name = str(path)
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        check_peft_folder(resolved, name)
    elif resolved.is_file():
        check_gguf_adapter(resolved, name)
    else:
        raise AdapterError("no such file or folder", name)
    return resolved


def _check_declared(name: str, shapes: Shapes, alpha: float, config: ModelConfig) -> None:
    """Every pair complete, a target of the model's, of a supported rank and the weight's shape, with a
    sane alpha / rank: all from the declared shapes."""
    if not shapes:
        raise AdapterError("holds no LoRA tensors", name)
    expected = config.expected_tensors()
    targets = config.layout.lora_targets
    for base, halves in shapes.items():
        a, b = halves.get("a"), halves.get("b")
        if a is None or b is None:
            raise AdapterError(f"{base} has lora_{'a' if a is None else 'b'} missing", name)
        if len(a) != 2 or len(b) != 2:
            raise AdapterError(f"{base} lora tensors must be matrices, got {a} and {b}", name)
        m = _TARGET_NAME.match(base)
        if m is None or m[2] not in targets or int(m[1]) >= config.n_layers:
            where = f"Realm adapts only {', '.join(targets)}" if base in expected else "the model has no such weight"
            raise AdapterError(f"targets {base}: {where}", name)
        n_out, n_in = expected[base]
        rank = a[0]
        if not 1 <= rank <= MAX_RANK:
            raise AdapterError(f"{base} has rank {rank}, supported ranks are 1..{MAX_RANK}", name)
        if a != (rank, n_in) or b != (n_out, rank):
            raise AdapterError(f"{base} lora_a {a} / lora_b {b} do not fit the weight's {(n_out, n_in)} "
                               f"(expected ({rank}, {n_in}) and ({n_out}, {rank}))", name)
        if alpha / rank > MAX_ALPHA_FACTOR:
            raise AdapterError(f"alpha {alpha:g} over {base}'s rank {rank} scales it by {alpha / rank:g}, "
                               f"more than {MAX_ALPHA_FACTOR:g}", name)
