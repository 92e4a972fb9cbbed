"""Unmerged LoRA on the CPU backends (NumPy and cpu): `y += s * B (A x)` for the rows that use an adapter.

A step's rows come from many sequences, each with its own adapter (or none) and scale, so the
update is applied per run of rows (BGMV-style): the base projection runs once over every row, then
each adapted run adds its low-rank term. The backends fuse projections that share an input (Q|K|V,
gate|up); an adapter's pairs for a fused projection are fused the same way: their A matrices are
stacked, so one shrink `x @ A_cat.T` serves every part, and each part's B expands its own slice of
the rank and of the output. Fused forms are built once per adapter and kept with it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.lora.adapter import LoraAdapter

# The parts of each fused projection of layer i, in the order their outputs are concatenated.
FUSED_PARTS = {"qkv": ("attn_q", "attn_k", "attn_v"), "gate_up": ("ffn_gate", "ffn_up"),
               "attn_output": ("attn_output",), "ffn_down": ("ffn_down",)}

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
    """Add each row run's adapter term to y (the fused projection `key` of `layer` applied to x), in place.

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
    """The adapter's pairs for one fused projection, stacked (None if it adapts none of its parts)."""
    cache = _fused_forms.get(adapter)
    if cache is not None and (layer, key) in cache:
        return cache[(layer, key)]
    with _fused_lock:
        cache = _fused_forms.setdefault(adapter, {})
        if (layer, key) not in cache:
            cache[(layer, key)] = _build_fused(adapter, layer, key, config)
    return cache[(layer, key)]


def _build_fused(adapter: LoraAdapter, layer: int, key: str, config: ModelConfig) -> FusedPairs | None:
    widths = {"attn_q": config.q_dim, "attn_k": config.kv_dim, "attn_v": config.kv_dim, "ffn_gate": config.n_ff,
              "ffn_up": config.n_ff, "attn_output": config.n_embd, "ffn_down": config.n_embd}
    a_parts, parts, out_at, rank_at = [], [], 0, 0
    for name in FUSED_PARTS[key]:
        pair = adapter.pairs.get(f"blk.{layer}.{name}.weight")
        if pair is not None:
            a_parts.append(pair.a)
            parts.append(FusedPart(slice(out_at, out_at + widths[name]), slice(rank_at, rank_at + pair.rank),
                                    pair.b, pair.scale(1.0)))
            rank_at += pair.rank
        out_at += widths[name]
    if not parts:
        return None
    return FusedPairs(np.ascontiguousarray(np.concatenate(a_parts)), tuple(parts))
