"""The NumPy backend: the CPU path and the reference every other backend is held to.

Weights are dequantized to float32 once at load and shared by every sequence; the projections that
read the same input are fused into one matrix (Q|K|V, gate|up) so a decode step is a handful of
BLAS matrix-vector products. Activations are plain (n_tokens, n_embd) float32 arrays.

Where llama.cpp rounds on purpose we round the same way, because it is the oracle: its KV cache holds
float16, its attention multiplies float16 queries and probabilities, and its dot products against
F16/BF16 weights first convert the activations to that type. Each costs little and closes most of the
gap to llama.cpp's logits on float models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np

from ..config import ModelConfig
from gguf import GGMLQuantizationType

from ..gguf_file import RawTensor
from ..quants import dequantize
from . import Backend, KVCache


class NumpyKVCache(KVCache):
    """Per-layer key/value arrays, grown by doubling so short sequences stay small.

    Values are rounded to float16 (llama.cpp's default cache type) but stored as float32, so that
    attention reads them without a conversion per step.
    """

    def __init__(self, config: ModelConfig, capacity: int) -> None:
        self.capacity = capacity
        self._shape_tail = (config.n_head_kv, config.head_dim)
        self._n_layers = config.n_layers
        self.k = np.zeros((config.n_layers, 0, *self._shape_tail), np.float32)  # (n_layers, allocated, n_kv, head_dim)
        self.v = np.zeros_like(self.k)

    def reserve(self, n_positions: int) -> None:
        if n_positions <= self.k.shape[1]:
            return
        size = min(self.capacity, max(n_positions, 2 * self.k.shape[1], 64))
        for name in ("k", "v"):
            grown = np.zeros((self._n_layers, size, *self._shape_tail), np.float32)
            old = getattr(self, name)
            grown[:, : old.shape[1]] = old
            setattr(self, name, grown)

    def truncate(self, length: int) -> None:
        # Positions past `length` are simply overwritten by the next step; attention never reads them.
        pass


class NumpyBackend(Backend):
    """Float32 forward pass with NumPy/BLAS."""

    name: ClassVar[str] = "numpy"

    def __init__(self, config: ModelConfig, tensors: Mapping[str, RawTensor],
                 progress: Callable[[float], None] | None = None) -> None:
        super().__init__(config, tensors)
        self._raw = tensors
        self._float: dict[str, np.ndarray] = {}  # dequantized weights, so a tied matrix is expanded once
        self._n_loaded, self._n_total, self._progress = 0, len(list(config.expected_tensors())), progress
        self.embedding = self._make_embedding(tensors["token_embd.weight"])
        self.output = self._make_projection([tensors["token_embd.weight" if config.tied_output else "output.weight"]])
        self.output_norm = self._vector("output_norm.weight")
        self.layers = [self._fuse_layer(i) for i in range(config.n_layers)]
        self.rope_factors = self._vector("rope_freqs.weight") if "rope_freqs.weight" in tensors else None
        self._inv_freq = {base: self._rope_inv_freq(base) for base in {config.rope_base, config.rope_base_local}}
        self._float.clear()

    # --- weight loading: the hooks a backend with another weight form (cpu: quantized) overrides ---

    def _make_projection(self, raws: list[RawTensor]) -> Projection:
        """One matrix y = x @ W.T over the rows of several weights that share an input (Q|K|V, gate|up)."""
        rounding = {_ACTIVATION_ROUNDING.get(raw.qtype) for raw in raws}
        weight = np.concatenate([self._dequantized(raw) for raw in raws]) if len(raws) > 1 else self._dequantized(raws[0])
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
        return self._dequantized(self._raw[name])

    def _loaded(self) -> None:
        self._n_loaded += 1
        if self._progress:
            self._progress(min(1.0, self._n_loaded / self._n_total))

    def _fuse_layer(self, i: int) -> dict[str, Projection | np.ndarray]:
        p, raw = f"blk.{i}.", self._raw
        layer: dict[str, Projection | np.ndarray] = {
            "qkv": self._make_projection([raw[p + "attn_q.weight"], raw[p + "attn_k.weight"], raw[p + "attn_v.weight"]]),
            "gate_up": self._make_projection([raw[p + "ffn_gate.weight"], raw[p + "ffn_up.weight"]]),
            "attn_output": self._make_projection([raw[p + "attn_output.weight"]]),
            "ffn_down": self._make_projection([raw[p + "ffn_down.weight"]]),
        }
        for key in ("attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"):
            if p + key + ".weight" in raw:
                layer[key] = self._vector(p + key + ".weight")
        return layer

    def _rope_inv_freq(self, base: float) -> np.ndarray:
        hd = self.config.head_dim
        inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (head_dim/2,)
        if self.rope_factors is not None:
            inv = inv / self.rope_factors.astype(np.float64)
        return inv

    def new_cache(self, capacity: int) -> NumpyKVCache:
        return NumpyKVCache(self.config, capacity)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return self.embedding(np.asarray(tokens, np.int64)) * np.float32(self.config.embedding_scale)

    def layer(self, index: int, x: np.ndarray, cache: KVCache, pos: int) -> np.ndarray:
        assert isinstance(cache, NumpyKVCache)
        cfg, w = self.config, self.layers[index]
        n = x.shape[0]
        qkv = w["qkv"](rms_norm(x, w["attn_norm"], cfg.norm_eps))  # (n, q_dim + 2 kv_dim)
        q = qkv[:, : cfg.q_dim].reshape(n, cfg.n_head, cfg.head_dim)
        k = qkv[:, cfg.q_dim : cfg.q_dim + cfg.kv_dim].reshape(n, cfg.n_head_kv, cfg.head_dim)
        v = qkv[:, cfg.q_dim + cfg.kv_dim :].reshape(n, cfg.n_head_kv, cfg.head_dim)
        if cfg.qk_norm:
            q = rms_norm(q, w["attn_q_norm"], cfg.norm_eps)
            k = rms_norm(k, w["attn_k_norm"], cfg.norm_eps)
        angles = np.arange(pos, pos + n, dtype=np.float64)[:, None] * self._inv_freq[cfg.layer_rope_base(index)]
        cos, sin = np.cos(angles).astype(np.float32)[:, None], np.sin(angles).astype(np.float32)[:, None]
        q, k = rope(q, cos, sin, cfg.rope_layout), rope(k, cos, sin, cfg.rope_layout)
        cache.reserve(pos + n)
        cache.k[index, pos : pos + n], cache.v[index, pos : pos + n] = round_to_f16(k), round_to_f16(v)
        attn = attention(q, cache.k[index], cache.v[index], pos, cfg.layer_window(index), cfg.attention_scale)
        a = w["attn_output"](attn.reshape(n, cfg.q_dim))
        if cfg.sandwich_norms:
            a = rms_norm(a, w["post_attention_norm"], cfg.norm_eps)
        x = x + a
        gate_up = w["gate_up"](rms_norm(x, w["ffn_norm"], cfg.norm_eps))  # (n, 2 n_ff)
        f = (gelu_tanh if cfg.ffn_activation == "gelu" else silu)(gate_up[:, : cfg.n_ff]) * gate_up[:, cfg.n_ff :]
        f = w["ffn_down"](f)
        if cfg.sandwich_norms:
            f = rms_norm(f, w["post_ffw_norm"], cfg.norm_eps)
        return x + f

    def logits(self, x: np.ndarray, last_only: bool = True) -> np.ndarray:
        if last_only:
            x = x[-1:]
        return self.output(rms_norm(x, self.output_norm, self.config.norm_eps))

    def weight_bytes_per_token(self) -> int:
        per_layer = sum(a.nbytes for layer in self.layers for a in layer.values())
        return per_layer + self.output.nbytes


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
        return x @ self.weight.T


def round_to_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16, as ggml's fp32 -> bf16 conversion does."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
    return bits.view(np.float32)


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


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, window: int,
              scale: float) -> np.ndarray:
    """Causal grouped-query attention of n new queries at positions pos.. over cached keys.

    q: (n, n_head, head_dim); k_cache/v_cache: (allocated, n_kv, head_dim). `window` > 0
    limits each query at position p to keys p-window+1..p. Queries and probabilities are rounded to
    float16 as llama.cpp's f16-cache matmuls do. Returns (n, n_head, head_dim).
    """
    n, n_head, hd = q.shape
    n_kv = k_cache.shape[1]
    end = pos + n
    start = max(0, pos - window + 1) if window else 0
    keys = k_cache[start:end].transpose(1, 2, 0)  # (n_kv, head_dim, L)
    values = v_cache[start:end].transpose(1, 0, 2)  # (n_kv, L, head_dim)
    qg = round_to_f16(q).reshape(n, n_kv, n_head // n_kv, hd).transpose(1, 2, 0, 3)  # (n_kv, group, n, head_dim)
    scores = (qg @ keys[:, None]) * np.float32(scale)  # (n_kv, group, n, L)
    q_pos = np.arange(pos, end)[:, None]
    k_pos = np.arange(start, end)[None, :]
    masked = k_pos > q_pos
    if window:
        masked |= k_pos <= q_pos - window
    scores = np.where(masked, -np.inf, scores)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = round_to_f16(scores / scores.sum(axis=-1, keepdims=True))
    out = probs @ values[:, None]  # (n_kv, group, n, head_dim)
    return out.transpose(2, 0, 1, 3).reshape(n, n_head, hd)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))
