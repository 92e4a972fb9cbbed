"""The NumPy backend: the CPU path and the reference every other backend is held to.

Weights are dequantized to float32 once at load and shared by every sequence; the projections that
read the same input are fused into one matrix (Q|K|V, gate|up) so a decode step is a handful of
matrix products. Activations are plain (n_tokens, n_embd) float32 arrays.

A step batches every item's rows through each projection (one GEMM over all rows), applies rope
with each row's own position, writes each row's K/V into its sequence's blocks of the model's KV
pool and attends per item over that sequence's keys only. Batch invariance: a row's logits are
bit-identical whatever else is in the step: every product runs on the native kernels' float32
tile (`tiled_matmul`: a fixed summation order per output, the weights read once for all rows),
because OpenBLAS's result for a row changes with the row count (GEMV for one row, GEMM for more);
where the kernels cannot build, one BLAS matrix-vector product per row does it at a lone decode
step's cost, and prefill's (docs/scheduler.md); attention and the element-wise ops are per row or
per sequence already. LoRA (docs/lora.md) keeps it: a step orders its items so each (adapter, scale)
and each merged copy has contiguous rows, and every row is computed on its own whatever the order.
Attention runs each query on its own, so a prefill
cut into any chunks (PREFILL_CHUNK, or the scheduler's prefill cap) gives the same bits in any company.

Where llama.cpp rounds on purpose we round the same way, because it is the oracle: its KV cache holds
float16, its attention multiplies float16 queries and probabilities, and its dot products against
F16/BF16 weights first convert the activations to that type. Each costs little and closes most of the
gap to llama.cpp's logits on float models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from gguf import GGMLQuantizationType

from host_functions import native
from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import PROJECTIONS, bias_name, weight_name
from host_functions.backends.base import (
    Backend,
    StepItem,
    head_outputs,
    in_grouped_order,
    merged_ranges,
    row_rope_factors,
    wanted_rows,
)
from host_functions.errors import BackendError
from host_functions.formats.gguf_file import RawTensor
from host_functions.formats.quants import dequantize
from host_functions.kv.block_table import KVCache
from host_functions.kv.pool import KVPool
from host_functions.lora.adapter import LoraAdapter
from host_functions.lora.merged import MergedLora, MergedLoraCache
from host_functions.lora.unmerged import RowAdapter, apply_lora


@dataclass
class _Span:
    """One step item's rows in the step's activations and the pool slots of its sequence's keys."""

    rows: slice  # its rows in the step's (n_rows, n_embd) activations
    pos: int  # position of its first new token
    key_slots: np.ndarray  # (pos + n,) pool slot of every position 0..pos+n-1
    n_ctx: int  # the positions its sequence is set up for (picks LongRoPE's factors)
    lora: tuple[LoraAdapter, float] | None = None  # its sequence's adapter and scale
    merged: MergedLora | None = None  # that adapter merged into the weights, if its sequence asked for it


@dataclass
class LayerWeights:
    """One block's weights: its products (arch.layout.PROJECTIONS) by key, its norm vectors by GGUF name and
    the bias of each product that has one (over all its columns; zeros for a matrix without one)."""

    projections: dict[str, Projection]
    norms: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        vectors = list(self.norms.values()) + list(self.biases.values())
        return sum(p.nbytes for p in self.projections.values()) + sum(v.nbytes for v in vectors)


class NumpyBackend(Backend):
    """Float32 forward pass with NumPy/BLAS."""

    name: ClassVar[str] = "numpy"

    def __init__(self, config: ModelConfig, tensors: Mapping[str, RawTensor],
                 progress: Callable[[float], None] | None = None) -> None:
        super().__init__(config, tensors)
        self._float: dict[str, np.ndarray] = {}  # dequantized weights, so a tied matrix is expanded once
        self._n_loaded, self._n_total, self._progress = 0, len(list(config.expected_tensors())), progress
        self.embedding = self._make_embedding(tensors["token_embd.weight"])
        self.output = self._make_projection([tensors["token_embd.weight" if config.tied_output else "output.weight"]])
        self.output_norm = self._vector("output_norm.weight")
        self.layers = [self._layer_weights(i) for i in range(config.n_layers)]
        self.rope_factors = {name: self._vector(name).astype(np.float64) for name in config.rope_factor_sets}
        self._inv_freq = {base: self._rope_inv_freq(base) for base in {config.rope_base, config.rope_base_local}}
        self._qkv_columns = config.output_columns("qkv")
        self._float.clear()
        self.merged_lora = MergedLoraCache(self, config)
        self.kv_k = self.kv_v = np.zeros((config.n_layers, 0, config.n_head_kv, config.head_dim), np.float32)

    # --- weight loading: the hooks a backend with another weight form (cpu: quantized) overrides ---

    def _make_projection(self, raws: list[RawTensor]) -> Projection:
        """One matrix y = x @ W.T over the rows of several weights that share an input (Q|K|V, gate|up)."""
        rounding = {_ACTIVATION_ROUNDING.get(raw.qtype) for raw in raws}
        weights = [self._dequantized(raw) for raw in raws]
        weight = np.concatenate(weights) if len(weights) > 1 else weights[0]
        return Projection(weight, rounding.pop() if len(rounding) == 1 else None)

    def _make_embedding(self, raw: RawTensor) -> Embedding:
        """The token embedding table, read a row per token."""
        return Embedding(self._dequantized(raw))

    def _dequantized(self, raw: RawTensor) -> np.ndarray:
        if raw.name not in self._float:
            self._float[raw.name] = dequantize(raw)
            self._loaded()
        return self._float[raw.name]

    def _vector(self, name: str) -> np.ndarray:
        """A norm or rope-factor vector: always float32, whatever the backend keeps weights as."""
        return self._dequantized(self.tensors[name])

    def _loaded(self) -> None:
        self._n_loaded += 1
        if self._progress:
            self._progress(min(1.0, self._n_loaded / self._n_total))

    def _layer_weights(self, i: int) -> LayerWeights:
        """Block i's products, each over the weights the structure table stacks for it, its norms and biases."""
        layout = self.config.layout
        biases = {}
        for p in PROJECTIONS:
            matrices = layout.projection_matrices(p.key)
            if any(m.name in layout.biases for m in matrices):
                biases[p.key] = np.concatenate([
                    self._vector(bias_name(i, m.name)) if m.name in layout.biases
                    else np.zeros(self.config.matrix_shape(m)[0], np.float32) for m in matrices])
        return LayerWeights({p.key: self._make_projection(self.projection_tensors(i, p.key)) for p in PROJECTIONS},
                            {n.name: self._vector(weight_name(i, n.name)) for n in layout.norms}, biases)

    # --- merged LoRA (lora.merged.MergeHost): float32 copies of the products ---

    def float_weight(self, layer: int, key: str) -> np.ndarray:
        return self.layers[layer].projections[key].weight

    def merged_nbytes(self, layer: int, key: str) -> int:
        return self.layers[layer].projections[key].weight.nbytes

    def merged_projection(self, layer: int, key: str, weight: np.ndarray) -> Projection:
        return Projection(weight, self.layers[layer].projections[key].round_input)

    def _rope_inv_freq(self, base: float) -> np.ndarray:
        hd = self.config.head_dim
        return base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (head_dim/2,)

    def _rope_angles(self, spans: list[_Span]) -> RopeAngles:
        """The step's rope angles, each span's divided by the factors its sequence's context picks."""
        row_factors = row_rope_factors(self.config, self.rope_factors,
                                       [(sp.rows.stop - sp.rows.start, sp.n_ctx) for sp in spans])
        return RopeAngles(_positions(spans), self._inv_freq, row_factors, self.config.rope_attn_factor)

    def _allocate_kv(self, pool: KVPool) -> None:
        # np.zeros maps untouched pages lazily: a large budget costs memory only as blocks are used.
        cfg = self.config
        shape = (cfg.n_layers, pool.n_blocks * pool.block_tokens, cfg.n_head_kv, cfg.head_dim)
        self.kv_k = np.zeros(shape, np.float32)  # (n_layers, pool slots, n_kv, head_dim), f16-rounded values
        self.kv_v = np.zeros(shape, np.float32)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return self.embedding(np.asarray(tokens, np.int64)) * np.float32(self.config.embedding_scale)

    def _step(self, items: Sequence[StepItem], n_layers: int) -> list[np.ndarray | None]:
        """The step with its items grouped (a row's result does not depend on its place): those of each
        merged entry after the others, and within the rest those of each (adapter, scale) together, so
        that every projection and every adapter term runs over contiguous row ranges."""
        return in_grouped_order(items, lambda ordered: self._step_in_order(ordered, n_layers))

    def _step_in_order(self, items: Sequence[StepItem], n_layers: int) -> list[np.ndarray | None]:
        x = self.embed(np.concatenate([item.tokens for item in items]))
        spans, start = [], 0
        for item in items:
            n = len(item.tokens)
            spans.append(_Span(slice(start, start + n), item.pos, item.cache.slots(0, item.pos + n),
                               item.context, item.lora, item.merged))
            start += n
        angles = self._rope_angles(spans)
        for index in range(n_layers):
            x = self._layer(index, x, spans, angles)
        picks = [wanted_rows(item, sp.rows.start) for item, sp in zip(items, spans, strict=True)]
        return head_outputs(items, picks, self.config.n_vocab, lambda rows: self.logits(x[rows], last_only=False),
                            lambda rows: self.final_norm(x[rows]))

    def layer(self, index: int, x: np.ndarray, cache: KVCache, pos: int) -> np.ndarray:
        cache.reserve(pos + x.shape[0])
        spans = [_Span(slice(0, x.shape[0]), pos, cache.slots(0, pos + x.shape[0]), cache.capacity)]
        return self._layer(index, x, spans, self._rope_angles(spans))

    def _layer(self, index: int, x: np.ndarray, spans: list[_Span], angles: RopeAngles) -> np.ndarray:
        """Block `index` over the rows of every span; each span attends over its own sequence."""
        cfg, w = self.config, self.layers[index]
        n = x.shape[0]
        runs = _adapter_runs(spans)
        merged = merged_ranges([(sp.rows, sp.merged) for sp in spans])
        base_rows = merged[0][0].start if merged else n

        def project(key: str, h: np.ndarray) -> np.ndarray:
            base = w.projections[key]
            if not merged:
                y = base(h)
            else:  # the base (and unmerged) rows first, then each merged adapter's rows through its own weights
                parts = [base(h[:base_rows])] if base_rows else []
                parts += [(m.projection(index, key) or base)(h[rows]) for rows, m in merged]
                y = np.concatenate(parts) if len(parts) > 1 else parts[0]
            y = self.apply_lora(y, h, index, key, runs) if runs else y
            return y + w.biases[key] if key in w.biases else y

        qkv = project("qkv", self.rms_norm(x, w.norms["attn_norm"], cfg.norm_eps))  # (n, q_dim + 2 kv_dim)
        columns = self._qkv_columns
        q = qkv[:, columns["q"]].reshape(n, cfg.n_head, cfg.head_dim)
        k = qkv[:, columns["k"]].reshape(n, cfg.n_head_kv, cfg.head_dim)
        v = qkv[:, columns["v"]].reshape(n, cfg.n_head_kv, cfg.head_dim)
        if cfg.qk_norm:
            q = self.rms_norm(q, w.norms["attn_q_norm"], cfg.norm_eps)
            k = self.rms_norm(k, w.norms["attn_k_norm"], cfg.norm_eps)
        cos, sin = angles.of_base(cfg.layer_rope_base(index))
        q, k = self.rope(q, cos, sin, cfg.rope_layout), self.rope(k, cos, sin, cfg.rope_layout)
        new_slots = np.concatenate([sp.key_slots[sp.pos :] for sp in spans])
        k_pool, v_pool = self.kv_k[index], self.kv_v[index]
        self.store_kv(k_pool, v_pool, new_slots, k, v)
        window = cfg.layer_window(index)
        attn = np.empty_like(q)
        for sp in spans:
            end = sp.key_slots.shape[0]
            first = max(0, sp.pos - window + 1) if window else 0
            slots = sp.key_slots[first:end]
            attn[sp.rows] = self.attention(q[sp.rows], k_pool, v_pool, slots, sp.pos, first, window,
                                           cfg.attention_scale)
        a = project("attn_output", attn.reshape(n, cfg.q_dim))
        if cfg.sandwich_norms:
            a = self.rms_norm(a, w.norms["post_attention_norm"], cfg.norm_eps)
        x = x + a
        gate_up = project("gate_up", self.rms_norm(x, w.norms["ffn_norm"], cfg.norm_eps))  # (n, 2 n_ff)
        f = project("ffn_down", self.ffn_activation(gate_up))
        if cfg.sandwich_norms:
            f = self.rms_norm(f, w.norms["post_ffw_norm"], cfg.norm_eps)
        return x + f

    def apply_lora(self, y: np.ndarray, x: np.ndarray, layer: int, key: str, runs: list[RowAdapter]) -> np.ndarray:
        """Add the unmerged adapter terms of `runs` to y = projection `key` of `layer` applied to x."""
        return apply_lora(y, x, layer, key, runs, self.config, tiled_matmul)

    # --- the element-wise ops, the KV writes and attention: hooks the cpu backend fills natively ---

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """The module's `rms_norm` over the last axis of x."""
        return rms_norm(x, weight, eps)

    def ffn_activation(self, gate_up: np.ndarray) -> np.ndarray:
        """act(gate) * up over the fused (n, 2 n_ff) gate|up output, act the model's (GELU-tanh or SiLU)."""
        n_ff = self.config.n_ff
        return (gelu_tanh if self.config.ffn_activation == "gelu" else silu)(gate_up[:, :n_ff]) * gate_up[:, n_ff:]

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
        """The module's `rope` of x (n, heads, head_dim) by cos/sin (n, 1, head_dim/2)."""
        return rope(x, cos, sin, layout)

    def store_kv(self, k_pool: np.ndarray, v_pool: np.ndarray, slots: np.ndarray, k: np.ndarray,
                 v: np.ndarray) -> None:
        """Write new keys/values (n, n_kv, head_dim) into a layer's pools at `slots`, rounded to float16
        as llama.cpp's f16 cache holds them."""
        k_pool[slots], v_pool[slots] = round_to_f16(k), round_to_f16(v)

    def attention(self, q: np.ndarray, k_pool: np.ndarray, v_pool: np.ndarray, slots: np.ndarray, pos: int,
                  start: int, window: int, scale: float) -> np.ndarray:
        """One span's attention (the module's `attention`) over the keys/values of a layer's pool
        (pool slots, n_kv, head_dim) at `slots`, those of positions start..pos+n-1."""
        return attention(q, k_pool[slots], v_pool[slots], pos, start, window, scale)

    def logits(self, x: np.ndarray, last_only: bool = True) -> np.ndarray:
        if last_only:
            x = x[-1:]
        return self.output(self.final_norm(x))

    def final_norm(self, x: np.ndarray) -> np.ndarray:
        return self.rms_norm(x, self.output_norm, self.config.norm_eps)

    def weight_bytes_per_token(self) -> int:
        return sum(layer.nbytes for layer in self.layers) + self.output.nbytes


def _positions(spans: list[_Span]) -> np.ndarray:
    """The position of every row of a step: (n,) int64."""
    return np.concatenate([np.arange(sp.pos, sp.pos + sp.rows.stop - sp.rows.start) for sp in spans])


class RopeAngles:
    """The cos/sin of a step's rope angles (each row at its own position), per rope base, computed on
    first use and shared by every layer of that base: once per step, not once per layer.

    `row_factors` (n, head_dim/2) divide each row's angles (Llama 3.1's rope_freqs, LongRoPE's factors
    of the row's sequence); cos and sin are multiplied by `scale` (LongRoPE's attn_factor), as ggml's
    rope does."""

    def __init__(self, positions: np.ndarray, inv_freq: Mapping[float, np.ndarray],
                 row_factors: np.ndarray | None = None, scale: float = 1.0) -> None:
        self._positions = positions.astype(np.float64)[:, None]  # (n, 1)
        if row_factors is not None:
            self._positions = self._positions / row_factors  # (n, head_dim/2)
        self._inv_freq = inv_freq  # base -> (head_dim/2,) float64
        self._scale = scale
        self._tables: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def of_base(self, base: float) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin), each (n, 1, head_dim/2) float32 and C-contiguous."""
        table = self._tables.get(base)
        if table is None:
            angles = self._positions * self._inv_freq[base]  # (n, head_dim/2) float64
            table = self._tables[base] = ((np.cos(angles) * self._scale).astype(np.float32)[:, None],
                                          (np.sin(angles) * self._scale).astype(np.float32)[:, None])
        return table


def _adapter_runs(spans: list[_Span]) -> list[RowAdapter]:
    """The unmerged adapter terms of a step: consecutive spans with one adapter and scale as one run."""
    runs: list[RowAdapter] = []
    for sp in spans:
        if sp.lora is None or sp.merged is not None:
            continue
        adapter, scale = sp.lora
        last = runs[-1] if runs else None
        if last is not None and last.end == sp.rows.start and last.adapter is adapter and last.scale == scale:
            runs[-1] = RowAdapter(last.start, sp.rows.stop, adapter, scale)
        else:
            runs.append(RowAdapter(sp.rows.start, sp.rows.stop, adapter, scale))
    return runs


class Embedding:
    """Token embedding rows from a float32 (n_vocab, n_embd) table."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """(n,) int64 ids -> (n, n_embd) float32 rows (unscaled)."""
        return self.table[tokens]


class Projection:
    """y = x @ W.T, with x first rounded the way llama.cpp's dot product for W's type rounds it."""

    def __init__(self, weight: np.ndarray, round_input: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.weight = weight  # (n_out, n_in) float32
        self.round_input = round_input

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.round_input is not None:
            x = self.round_input(x)
        return tiled_matmul(x, self.weight)


def tiled_matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x @ weight.T, each row's bits depending only on that row, never on its neighbours.

    OpenBLAS picks its kernel, blocking and threading by the row count (a single row even goes
    through GEMV), and a row's bits change with them. So the products run on the native kernels'
    float32 tile (fixed summation order, weights read once per call for all rows), or, where those
    cannot load (no ziglang, another OS), as one BLAS product per row (tests/test_batching_numpy holds
    both to invariance).
    """
    kernels = float_kernels()
    if kernels is not None:
        rows = np.ascontiguousarray(weight, np.float32).view(np.uint8)
        return kernels.matmul([(int(GGMLQuantizationType.F32), rows)], weight.shape[1], x)
    return blas_rowwise_matmul(x, weight)


def blas_rowwise_matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """tiled_matmul's fallback: one matrix-vector product per row, the same BLAS call for every row.

    Not GEMMs over tiles of rows: some BLAS kernels (OpenBLAS's Haswell and Zen sgemm) give a row
    other bits at another place in the tile, so a row's result would depend on its neighbours.
    """
    out = np.empty((x.shape[0], weight.shape[0]), np.float32)
    for i, row in enumerate(x):
        np.matmul(weight, row, out=out[i])
    return out


@functools.cache
def _float_kernels_or_none() -> native.Kernels | None:
    try:
        return native.load()
    except BackendError:
        return None


def float_kernels() -> native.Kernels | None:
    """The native kernels for float32 products (at the current default thread count), or None where
    they cannot be built or loaded on this machine."""
    kernels = _float_kernels_or_none()
    if kernels is not None and kernels.threads != native.default_threads():
        kernels.set_threads(native.default_threads())
    return kernels


def round_to_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16, as ggml's fp32 -> bf16 conversion does."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
    return rounded.astype(np.uint32, copy=False).view(np.float32)


# llama.cpp converts activations to its "vec_dot_type" before a dot product with these weight types.
_ACTIVATION_ROUNDING = {GGMLQuantizationType.F16: round_to_f16, GGMLQuantizationType.BF16: round_to_bf16}


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / rms(x) * weight over the last axis (GGUF norm weights are used as stored)."""
    ms = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return x * (1.0 / np.sqrt(ms + np.float32(eps))) * weight


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
    """Rotate (n, heads, head_dim) by per-position angles; cos/sin are (n, 1, head_dim/2)."""
    if layout == "neox":  # rotate first half against second half
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]  # interleaved pairs (x[2i], x[2i+1])
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos: int, start: int, window: int,
              scale: float) -> np.ndarray:
    """Causal grouped-query attention of n new queries at positions pos.. over one sequence's keys.

    q: (n, n_head, head_dim); keys/values: (L, n_kv, head_dim) of positions start..pos+n-1.
    `window` > 0 limits each query at position p to keys p-window+1..p. Queries and probabilities
    are rounded to float16 as llama.cpp's f16-cache matmuls do. Returns (n, n_head, head_dim).

    Each query attends on its own, over exactly the keys it sees, as a one-token decode step would:
    BLAS gives other bits for an (n, d) x (d, L) product than for n products of one row, and the sums
    over a longer, masked row associate differently. So a token's result never depends on how its
    sequence was cut into steps (a prompt in one chunk or token by token, a speculative verification
    of k drafts), which keeps speculation exact. It costs a Python loop over a prefill chunk's queries.
    """
    out = np.empty_like(q)
    for i in range(q.shape[0]):
        p = pos + i
        first = max(0, p - window + 1) if window else 0
        out[i] = _attend(q[i], keys[first - start : p - start + 1], values[first - start : p - start + 1], scale)
    return out


def _attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float) -> np.ndarray:
    """One query (n_head, head_dim) over keys/values (L, n_kv, head_dim) it may all see."""
    n_head, hd = q.shape
    n_kv = keys.shape[1]
    qg = round_to_f16(q).reshape(n_kv, n_head // n_kv, 1, hd)  # (n_kv, group, 1, head_dim)
    scores = (qg @ keys.transpose(1, 2, 0)[:, None]) * np.float32(scale)  # (n_kv, group, 1, L)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = round_to_f16(scores / scores.sum(axis=-1, keepdims=True))
    return (probs @ values.transpose(1, 0, 2)[:, None]).reshape(n_head, hd)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))
