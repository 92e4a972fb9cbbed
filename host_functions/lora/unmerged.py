"""Unmerged LoRA on the CPU backends (NumPy and cpu): `y += s * B (A x)` for the rows that use an adapter.

A step's rows come from many sequences, each with its own adapter (or none) and scale, so the
update is applied per run of rows (BGMV-style): the base product runs once over every row, then
each adapted run adds its low-rank term. The backends compute the matrices that share an input as
one product (Q|K|V, gate|up: arch.layout.PROJECTIONS); an adapter's pairs for a product are fused
the same way: their A matrices are stacked, so one shrink `x @ A_cat.T` serves every part, and each
part's B expands its own slice of the rank and of the output. Fused forms are built once per adapter
and kept with it (the merged copies of lora.merged are built from them too).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import weight_name
from host_functions.lora.adapter import LoraAdapter

MatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x (n, k), w (m, k)) -> x @ w.T (n, m)


@dataclass(frozen=True)
class RowAdapter:
    """Rows [start, end) of a step use `adapter` at `scale`."""

    start: int
    end: int
    adapter: LoraAdapter
    scale: float


@dataclass(frozen=True)
class FusedPart:
    out: slice  # columns of the fused projection's output
    rank: slice  # columns of the shrunk t = x @ A_cat.T
    b: np.ndarray  # (n_out_part, rank_part)
    alpha_over_rank: float  # the pair's factor at user scale 1


@dataclass(frozen=True, eq=False)
class FusedPairs:
    a: np.ndarray  # (sum of ranks, n_in)
    parts: tuple[FusedPart, ...]


_fused_lock = threading.Lock()
_fused_forms: weakref.WeakKeyDictionary[LoraAdapter, dict[tuple[int, str], FusedPairs | None]] = (
    weakref.WeakKeyDictionary())  # dropped with the adapter when the pool lets it go


def apply_lora(y: np.ndarray, x: np.ndarray, layer: int, key: str, rows: Sequence[RowAdapter],
               config: ModelConfig, matmul: MatMul) -> np.ndarray:
    """Add each row run's adapter term to y (the product `key` of `layer` applied to x), in place.

    `matmul` is the backend's product, so LoRA rows get the same reduction order whatever their
    batch neighbours are. Returns y.
    """
    for run in rows:
        fused = fused_pairs(run.adapter, layer, key, config)
        if fused is None:
            continue
        t = matmul(x[run.start:run.end], fused.a)  # (n, sum of ranks)
        for part in fused.parts:
            delta = matmul(t[:, part.rank], part.b)
            y[run.start:run.end, part.out] += np.float32(run.scale * part.alpha_over_rank) * delta
    return y


def fused_pairs(adapter: LoraAdapter, layer: int, key: str, config: ModelConfig) -> FusedPairs | None:
    """The adapter's pairs for product `key` of `layer`, stacked (None if it adapts none of its matrices)."""
    cache = _fused_forms.get(adapter)
    if cache is not None and (layer, key) in cache:
        return cache[(layer, key)]
    with _fused_lock:
        cache = _fused_forms.setdefault(adapter, {})
        if (layer, key) not in cache:
            cache[(layer, key)] = _build_fused(adapter, layer, key, config)
    return cache[(layer, key)]


def _build_fused(adapter: LoraAdapter, layer: int, key: str, config: ModelConfig) -> FusedPairs | None:
    a_parts, parts, out_at, rank_at = [], [], 0, 0
    for matrix in config.layout.projection_matrices(key):
        rows = config.matrix_shape(matrix)[0]
        pair = adapter.pairs.get(weight_name(layer, matrix.name))
        if pair is not None:
            a_parts.append(pair.a)
            parts.append(FusedPart(slice(out_at, out_at + rows), slice(rank_at, rank_at + pair.rank), pair.b,
                                   pair.scale(1.0)))
            rank_at += pair.rank
        out_at += rows
    if not parts:
        return None
    return FusedPairs(np.ascontiguousarray(np.concatenate(a_parts)), tuple(parts))
