"""Record the transformer's non-matmul WGSL kernels: RMSNorm, rope, attention, element-wise, LoRA.

Each function records one dispatch into a `Recorder` (see wgpu_context); buffers are GPU buffers or
`(buffer, byte_offset, byte_size)` ranges, all float32 unless a KV cache is f16. The kernels'
params structs are documented at the top of their .wgsl files; the `struct.pack` formats here
mirror them field by field. `reference` holds a float64 NumPy version of every op, which the
tests and `realm kernels test` hold the kernels to.
"""

from __future__ import annotations

import struct
from typing import Any, Literal

from host_functions.backends.wgpu.context import GPUContext, Recorder, workgroup_grid

WG = 64  # threads per workgroup of every kernel here (a power of two, as their reductions need)
MAX_HEAD_DIM = 512  # the size of the rope/attention kernels' per-row workgroup arrays

Buffer = Any  # GPUBuffer | (GPUBuffer, offset, size)
Activation = Literal["silu", "gelu"]

# OP_* of elementwise.wgsl
_ELEMENTWISE_OPS = {"add": 0, "scale": 1, "silu": 2, "gelu": 3, "f16": 4, "bf16": 5, "bias": 6}
Rounding = Literal["f16", "bf16"]


def rms_norm(rec: Recorder, x: Buffer, weight: Buffer, out: Buffer, n_rows: int, n_cols: int,
             eps: float, *, add: bool = False, in_offset: int = 0, out_offset: int = 0) -> None:
    """out[r] (+)= x[r] / rms(x[r]) * weight for n_rows rows of n_cols; offsets in elements."""
    pipe = rec.ctx.pipeline(("reduce.wgsl", "norm.wgsl"), "main", {"WG": WG, "ADD_TO_OUT": add})
    params = struct.pack("<4If3I", n_rows, n_cols, in_offset, out_offset, eps, 0, 0, 0)
    rec.dispatch(pipe, [params, x, weight, out], _grid(rec.ctx, n_rows))


def rope(rec: Recorder, src: Buffer, dst: Buffer, n_tokens: int, n_heads: int, head_dim: int, pos: int,
         base: float, *, neox: bool, rotate: bool = True, norm_weight: Buffer | None = None,
         eps: float = 0.0, factors: Buffer | None = None, mscale: float = 1.0, out_f16: bool = False,
         src_offset: int = 0, dst_offset: int = 0, rows: Buffer | None = None, table: Buffer | None = None,
         block_tokens: int = 16) -> None:
    """Rotate (n_tokens, n_heads, head_dim) heads at positions pos.. into dst (f32 or packed f16).

    `norm_weight` first RMS-normalizes each head (gemma3 Q/K norms); `factors` ((n_tokens, head_dim/2)
    f32) divides each token's pair angles (llama 3.1 rope_freqs, LongRoPE's factors of the token's
    sequence); cos and sin are multiplied by `mscale` (LongRoPE's attn_factor); rotate=False only
    normalizes/converts (storing V into a cache).
    Offsets are in elements of src (f32) and of dst (f32 or f16). `rows` ((n_tokens, 2) u32:
    position, start of the token's block table in `table`) gives each token its own position;
    with `table` too, token t goes to its paged KV slot (see rope.wgsl) instead of row t.
    """
    assert head_dim % 2 == 0 and head_dim <= MAX_HEAD_DIM, head_dim
    assert not out_f16 or dst_offset % 2 == 0, dst_offset
    assert table is None or rows is not None
    constants = {"WG": WG, "NORM": norm_weight is not None, "ROTATE": rotate, "NEOX": neox,
                 "HAS_FACTORS": factors is not None, "OUT_F16": out_f16, "ROW_POSITIONS": rows is not None,
                 "PAGED": table is not None, "BLOCK_TOKENS": block_tokens}
    pipe = rec.ctx.pipeline(("reduce.wgsl", "rounding.wgsl", "rope.wgsl"), "main", constants)
    n_rows = n_tokens * n_heads
    params = struct.pack("<6I3f3I", n_rows, n_heads, head_dim, pos, src_offset, dst_offset, base, eps, mscale,
                         0, 0, 0)
    bindings = [params, src, _or_dummy(rec.ctx, norm_weight), _or_dummy(rec.ctx, factors), dst,
                _or_dummy(rec.ctx, rows), _or_dummy(rec.ctx, table)]
    rec.dispatch(pipe, bindings, _grid(rec.ctx, n_rows))


def attention(rec: Recorder, q: Buffer, k_cache: Buffer, v_cache: Buffer, out: Buffer, n_tokens: int,
              n_head: int, n_head_kv: int, head_dim: int, pos: int, window: int, scale: float,
              *, kv_f16: bool = False, rows: Buffer | None = None, table: Buffer | None = None,
              block_tokens: int = 16) -> None:
    """Causal GQA of q (n_tokens, n_head, head_dim) at positions pos.. over the cache's 0..pos+n-1.

    The caches are one layer's (capacity, n_head_kv, head_dim); window > 0 limits position p to
    keys p-window+1..p. Writes out (n_tokens, n_head, head_dim). With kv_f16 the caches hold packed
    f16 and the query and probabilities are rounded to f16, as llama.cpp does with its f16 cache.
    Paged (`rows` and `table`, see attention.wgsl): the caches are one layer of the KV pool, query
    t is at position rows[t, 0] of the sequence whose block table starts at table[rows[t, 1]], and
    `pos` is unused; one dispatch serves every sequence of a step.
    """
    assert head_dim <= MAX_HEAD_DIM and n_head % n_head_kv == 0, (head_dim, n_head, n_head_kv)
    assert (rows is None) == (table is None)
    constants = {"WG": WG, "KV_F16": kv_f16, "PAGED": table is not None, "BLOCK_TOKENS": block_tokens}
    pipe = rec.ctx.pipeline(("reduce.wgsl", "rounding.wgsl", "attention.wgsl"), "main", constants)
    params = struct.pack("<6IfI", n_tokens, n_head, n_head_kv, head_dim, pos, window, scale, 0)
    bindings = [params, q, k_cache, v_cache, out, _or_dummy(rec.ctx, rows), _or_dummy(rec.ctx, table)]
    rec.dispatch(pipe, bindings, (n_head, n_tokens))


def add(rec: Recorder, dst: Buffer, a: Buffer, n: int) -> None:
    """dst[:n] += a[:n]."""
    _elementwise(rec, "add", dst, a, a, n)


def add_bias(rec: Recorder, dst: Buffer, bias: Buffer, n_rows: int, width: int) -> None:
    """dst (n_rows, width) += bias (width,) on every row (qwen2's Q, K and V biases)."""
    _elementwise(rec, "bias", dst, bias, bias, n_rows * width, width=width)


def scale(rec: Recorder, dst: Buffer, n: int, factor: float) -> None:
    """dst[:n] *= factor."""
    _elementwise(rec, "scale", dst, _dummy(rec.ctx), _dummy(rec.ctx), n, factor)


def gated(rec: Recorder, dst: Buffer, gate: Buffer, up: Buffer, n: int, activation: Activation) -> None:
    """dst[:n] = act(gate) * up, act = SiLU (llama) or GELU-tanh (gemma)."""
    _elementwise(rec, activation, dst, gate, up, n)


def round_to(rec: Recorder, dst: Buffer, a: Buffer, n: int, kind: Rounding) -> None:
    """dst[:n] = a[:n] rounded to f16 or bf16 (nearest even), kept as f32."""
    _elementwise(rec, kind, dst, a, a, n)


def _elementwise(rec: Recorder, op: str, dst: Buffer, a: Buffer, b: Buffer, n: int, factor: float = 1.0,
                 width: int = 0) -> None:
    pipe = rec.ctx.pipeline(("rounding.wgsl", "elementwise.wgsl"), "main", {"WG": WG, "OP": _ELEMENTWISE_OPS[op]})
    rec.dispatch(pipe, [struct.pack("<If2I", n, factor, width, 0), a, b, dst], _grid(rec.ctx, -(-n // WG)))


def lora_shrink(rec: Recorder, x: Buffer, lora_a: Buffer, adapter: Buffer, scales: Buffer, t: Buffer,
                n_rows: int, n_in: int, rank: int) -> None:
    """t (n_rows, rank) = scales[r] * A[ad] @ x[r], ad = adapter[r]; rows with adapter -1 get zeros.

    lora_a is (n_adapters, rank, n_in) f32, adapter (n_rows,) int32, scales (n_rows,) f32 holding
    each row's user scale * alpha / rank.
    """
    pipe = rec.ctx.pipeline(("reduce.wgsl", "lora.wgsl"), "shrink", {"WG": WG})
    params = struct.pack("<4I", n_rows, n_in, 0, rank)
    rec.dispatch(pipe, [params, adapter, x, lora_a, t, scales], (rank, n_rows))


def lora_expand(rec: Recorder, t: Buffer, lora_b: Buffer, adapter: Buffer, y: Buffer,
                n_rows: int, n_out: int, rank: int) -> None:
    """y[r] += B[adapter[r]] @ t[r] for rows with an adapter; lora_b is (n_adapters, n_out, rank) f32."""
    pipe = rec.ctx.pipeline(("reduce.wgsl", "lora.wgsl"), "expand", {"WG": WG})
    params = struct.pack("<4I", n_rows, 0, n_out, rank)
    rec.dispatch(pipe, [params, adapter, t, lora_b, y], (-(-n_out // WG), n_rows))


def _grid(ctx: GPUContext, n_groups: int) -> tuple[int, int]:
    return workgroup_grid(n_groups, ctx.max_workgroups_per_dim)


_DUMMIES: dict[int, Any] = {}


def _or_dummy(ctx: GPUContext, buffer: Buffer | None) -> Buffer:
    return _dummy(ctx) if buffer is None else buffer


def _dummy(ctx: GPUContext) -> Any:
    """A 16-byte buffer bound where a kernel variant ignores an input (WebGPU binds every slot)."""
    buf = _DUMMIES.get(id(ctx))
    if buf is None:
        buf = _DUMMIES[id(ctx)] = ctx.empty(16)
    return buf
