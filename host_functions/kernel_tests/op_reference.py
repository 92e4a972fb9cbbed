"""Float64 NumPy references for the non-matmul GPU kernels (wgpu_ops), written for clarity.

Each function is the plain definition of one op, independent of the NumPy backend's optimized
code, so a kernel test compares two separate implementations of the same formula.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis."""
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, pos: int, base: float, neox: bool, factors: np.ndarray | None = None,
         mscale: float = 1.0) -> np.ndarray:
    """Rotate x (n_tokens, n_heads, head_dim); token t is at position pos + t.

    Pair i (x[2i], x[2i+1]) for llama, (x[i], x[i + head_dim/2]) for NeoX, turns by
    (pos + t) * base^(-2i/head_dim) / factors[t, i], with cos and sin multiplied by mscale.
    """
    n, _, hd = x.shape
    inv_freq = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    theta = np.arange(pos, pos + n, dtype=np.float64)[:, None, None] * inv_freq  # (n, 1, hd/2)
    if factors is not None:
        theta = theta / np.asarray(factors, np.float64).reshape(n, 1, hd // 2)
    cos, sin = np.cos(theta) * mscale, np.sin(theta) * mscale
    i0 = np.arange(hd // 2) if neox else np.arange(0, hd, 2)
    i1 = i0 + hd // 2 if neox else i0 + 1
    x = x.astype(np.float64)
    out = x.copy()
    a, b = x[..., i0], x[..., i1]
    out[..., i0] = a * cos - b * sin
    out[..., i1] = a * sin + b * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: int, window: int, scale: float,
              round_f16: bool = False) -> np.ndarray:
    """Causal GQA: q (n, n_head, hd) at positions pos.. over k, v (>= pos + n, n_kv, hd).

    Query head h uses KV head h // (n_head // n_kv); position p sees keys max(0, p-window+1)..p
    (all keys up to p when window == 0). round_f16 rounds the query and the normalized
    probabilities to float16 first, as llama.cpp's matmuls against an f16 KV cache do.
    """
    if round_f16:
        q = q.astype(np.float16)
    n, n_head, hd = q.shape
    group = n_head // k.shape[1]
    out = np.zeros((n, n_head, hd))
    for t in range(n):
        p = pos + t
        lo = max(0, p - window + 1) if window else 0
        for h in range(n_head):
            keys, values = k[lo : p + 1, h // group].astype(np.float64), v[lo : p + 1, h // group].astype(np.float64)
            s = keys @ q[t, h].astype(np.float64) * scale
            w = np.exp(s - s.max())
            probs = w / w.sum()
            if round_f16:
                probs = probs.astype(np.float16).astype(np.float64)
            out[t, h] = probs @ values
    return out


def silu(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def gated(gate: np.ndarray, up: np.ndarray, activation: str) -> np.ndarray:
    """act(gate) * up for act in {"silu", "gelu"}."""
    return (silu if activation == "silu" else gelu_tanh)(gate) * up


def round_to(x: np.ndarray, kind: str) -> np.ndarray:
    """x rounded to float16 or bfloat16 (nearest, ties to even), back in float32."""
    x = np.asarray(x, np.float32)
    if kind == "f16":
        return x.astype(np.float16).astype(np.float32)
    mantissa, exponent = np.frexp(x.astype(np.float64))  # x = mantissa * 2^exponent, 0.5 <= |mantissa| < 1
    return (np.rint(mantissa * 256.0) / 256.0 * np.exp2(exponent)).astype(np.float32)  # 8 significant bits


def lora(x: np.ndarray, y: np.ndarray, lora_a: np.ndarray, lora_b: np.ndarray, adapter: np.ndarray,
         scales: np.ndarray) -> np.ndarray:
    """y + scales[r] * B[ad] @ (A[ad] @ x[r]) per row r, ad = adapter[r] (rows with -1 unchanged).

    x (n_rows, n_in), y (n_rows, n_out), lora_a (n_adapters, rank, n_in), lora_b (n_adapters, n_out, rank).
    """
    out = y.astype(np.float64)
    for r, ad in enumerate(adapter):
        if ad >= 0:
            out[r] += scales[r] * (lora_b[ad].astype(np.float64) @ (lora_a[ad].astype(np.float64) @ x[r]))
    return out
