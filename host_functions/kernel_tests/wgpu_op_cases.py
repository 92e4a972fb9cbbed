"""Kernel-harness cases for the non-matmul kernels (wgpu_ops) against float64 NumPy (op_reference).

Registered when the kernel_tests package is imported, so `realm kernels test` and
tests/test_kernels_ops.py run the same cases. Shapes deliberately include sizes that are not
multiples of the 64-thread workgroup, prefill and decode query counts at positions > 0, GQA,
sliding windows, f16 KV caches, writes at offsets (what lies outside them must stay untouched).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from host_functions.backends.wgpu import ops
from host_functions.backends.wgpu.context import GPUContext, Recorder
from host_functions.kernel_tests import op_reference as ref
from host_functions.kernel_tests.harness import Prepared, register_case

Prepare = Callable[[GPUContext, np.random.Generator], Prepared]

# Tolerances relative to the largest reference value: f32 arithmetic over at most a few thousand
# terms stays within ~1e-6; rope's f32 angles lose ~position * 6e-8 rad; f16 storage adds 2^-11.
ROW_TOL = 1e-5
F16_TOL = 2e-3  # f16-stored outputs: half an f16 ulp (2^-11 relative) plus f32 error


def _case(record: Callable[[Recorder], None], ctx: GPUContext, out: Any, shape: tuple[int, ...],
          reference: np.ndarray, tol: float, nbytes: int, dtype: Any = np.float32) -> Prepared:
    """A Prepared whose output is `out` read back as `shape` and checked relative to max|reference|."""
    scale = max(float(np.max(np.abs(reference))), 1e-30)
    return Prepared(record=record, read=lambda: ctx.read(out, dtype, shape).astype(np.float64),
                    reference=np.asarray(reference, np.float64), scale=scale, tol=tol, nbytes=nbytes)


# ---- RMSNorm --------------------------------------------------------------------------------------

def _rms_norm(n_rows: int, n_cols: int, residual: bool = False) -> Prepare:
    """Rows of x normalized into out; `residual` adds rows 2.. of x into rows 1.. of an existing out."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        x = rng.standard_normal((n_rows + 2, n_cols)).astype(np.float32) * 3
        w = rng.standard_normal(n_cols).astype(np.float32)
        base = rng.standard_normal((n_rows + 1, n_cols)).astype(np.float32) if residual \
            else np.zeros((n_rows, n_cols), np.float32)
        x_buf, w_buf, out = ctx.upload(x), ctx.upload(w), ctx.upload(base)
        expected = base.astype(np.float64)
        if residual:
            expected[1:] += ref.rms_norm(x[2:], w, 1e-6)
        else:
            expected = ref.rms_norm(x[:n_rows], w, 1e-6)
        in_at, out_at = (2 * n_cols, n_cols) if residual else (0, 0)
        return _case(lambda rec: ops.rms_norm(rec, x_buf, w_buf, out, n_rows, n_cols, 1e-6, add=residual,
                                              in_offset=in_at, out_offset=out_at),
                     ctx, out, base.shape, expected, ROW_TOL, 3 * n_rows * n_cols * 4)
    return prepare


# ---- rope -----------------------------------------------------------------------------------------

def _rope(n_tokens: int, n_heads: int, head_dim: int, pos: int, base: float, neox: bool, *,
          norm: bool = False, factors: bool = False, mscale: float = 1.0, f16_offset: int | None = None,
          rotate: bool = True) -> Prepare:
    """Rotate heads into a zeroed dst; f16_offset writes packed f16 starting that many positions in;
    `factors`: each token its own (as rows of sequences with LongRoPE's short or long factors)."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        x = rng.standard_normal((n_tokens, n_heads, head_dim)).astype(np.float32) * (4 if norm else 1)
        w = rng.standard_normal(head_dim).astype(np.float32)
        ff = rng.uniform(1.0, 8.0, (n_tokens, head_dim // 2)).astype(np.float32)
        y = ref.rms_norm(x, w, 1e-6) if norm else x.astype(np.float64)
        y = ref.rope(y, pos, base, neox, ff if factors else None, mscale) if rotate else y
        row = n_heads * head_dim
        skip = f16_offset or 0
        expected = np.zeros((skip + n_tokens, row))
        expected[skip:] = y.reshape(n_tokens, row)
        f16 = f16_offset is not None
        dst = ctx.empty(expected.size * (2 if f16 else 4))
        x_buf, w_buf, ff_buf = ctx.upload(x), ctx.upload(w), ctx.upload(ff)
        record = lambda rec: ops.rope(  # noqa: E731
            rec, x_buf, dst, n_tokens, n_heads, head_dim, pos, base, neox=neox, rotate=rotate,
            norm_weight=w_buf if norm else None, eps=1e-6, factors=ff_buf if factors else None, mscale=mscale,
            out_f16=f16, dst_offset=skip * row)
        # f32 angles near 4e4 rad carry ~4e-3 absolute error (llama.cpp computes them in f32 too)
        tol = F16_TOL if f16 else (1e-4 if pos < 2000 else 1e-2)
        return _case(record, ctx, dst, expected.shape, expected, tol, 2 * x.nbytes,
                     dtype=np.float16 if f16 else np.float32)
    return prepare


# ---- attention ------------------------------------------------------------------------------------

def _attention(n_tokens: int, n_head: int, n_head_kv: int, head_dim: int, pos: int, window: int,
               kv_f16: bool, magnitude: float = 1.0) -> Prepare:
    """Queries at pos.. over a cache whose positions past the queries hold poison (never read)."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        capacity = pos + n_tokens + 3
        q = rng.standard_normal((n_tokens, n_head, head_dim)).astype(np.float32) * magnitude
        k = rng.standard_normal((capacity, n_head_kv, head_dim)).astype(np.float32) * 2 * magnitude
        v = rng.standard_normal((capacity, n_head_kv, head_dim)).astype(np.float32)
        k[pos + n_tokens :], v[pos + n_tokens :] = 6e4, np.nan
        if kv_f16:
            k, v = k.astype(np.float16), v.astype(np.float16)
        k_buf = ctx.upload(np.ascontiguousarray(k).reshape(-1).view(np.uint32))
        v_buf = ctx.upload(np.ascontiguousarray(v).reshape(-1).view(np.uint32))
        q_buf, out = ctx.upload(q), ctx.empty(q.nbytes)
        scale = head_dim ** -0.5
        expected = ref.attention(q, k.astype(np.float32), v.astype(np.float32), pos, window, scale, round_f16=kv_f16)
        record = lambda rec: ops.attention(  # noqa: E731
            rec, q_buf, k_buf, v_buf, out, n_tokens, n_head, n_head_kv, head_dim, pos, window, scale, kv_f16=kv_f16)
        n_keys = min(window or pos + n_tokens, pos + n_tokens)
        return _case(record, ctx, out, q.shape, expected, 1e-4, q.nbytes * 2 + 2 * n_keys * k[0].nbytes)
    return prepare


# ---- the paged KV pool ----------------------------------------------------------------------------

BLOCK = 4  # positions per block in the paged cases: small, so short sequences span several blocks


def _paged_layout(seqs: list[tuple[int, int]], rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, int]:
    """Block tables for sequences (pos, n_tokens) in a pool with spare blocks, ids shuffled: (tables,
    rows (n_tokens, 2) u32 of position and table start, the concatenated tables, pool blocks)."""
    needed = [-(-(pos + n) // BLOCK) for pos, n in seqs]
    n_blocks = sum(needed) + 3
    ids = rng.permutation(n_blocks).astype(np.uint32)
    tables, rows, at = [], [], 0
    for (pos, n), count in zip(seqs, needed, strict=True):
        tables.append(ids[at : at + count])
        rows += [(pos + t, at) for t in range(n)]
        at += count
    return tables, np.array(rows, np.uint32), np.concatenate(tables), n_blocks


def _slots(table: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return table[positions // BLOCK].astype(np.int64) * BLOCK + positions % BLOCK


def _paged_attention(seqs: list[tuple[int, int]], n_head: int, n_head_kv: int, head_dim: int, window: int,
                     kv_f16: bool) -> Prepare:
    """The queries of several sequences (pos, n_tokens) in one dispatch over a pool whose blocks are
    shuffled; every slot no query may read holds poison."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        tables, rows, flat, n_blocks = _paged_layout(seqs, rng)
        n_tokens = len(rows)
        q = rng.standard_normal((n_tokens, n_head, head_dim)).astype(np.float32)
        k = np.full((n_blocks * BLOCK, n_head_kv, head_dim), 6e4, np.float32)
        v = np.full_like(k, np.nan)
        expected, first = [], 0
        for (pos, n), table in zip(seqs, tables, strict=True):
            slots = _slots(table, np.arange(pos + n))
            k[slots] = rng.standard_normal((pos + n, n_head_kv, head_dim)) * 2
            v[slots] = rng.standard_normal((pos + n, n_head_kv, head_dim))
            kk, vv = (k[slots].astype(np.float16), v[slots].astype(np.float16)) if kv_f16 else (k[slots], v[slots])
            expected.append(ref.attention(q[first : first + n], kk.astype(np.float32), vv.astype(np.float32), pos,
                                          window, head_dim ** -0.5, round_f16=kv_f16))
            first += n
        store = (lambda a: a.astype(np.float16)) if kv_f16 else (lambda a: a)
        k_buf, v_buf = (ctx.upload(np.ascontiguousarray(store(a)).reshape(-1).view(np.uint32)) for a in (k, v))
        q_buf, out, rows_buf, table_buf = ctx.upload(q), ctx.empty(q.nbytes), ctx.upload(rows), ctx.upload(flat)
        record = lambda rec: ops.attention(  # noqa: E731
            rec, q_buf, k_buf, v_buf, out, n_tokens, n_head, n_head_kv, head_dim, 0, window, head_dim ** -0.5,
            kv_f16=kv_f16, rows=rows_buf, table=table_buf, block_tokens=BLOCK)
        return _case(record, ctx, out, q.shape, np.concatenate(expected), 1e-4, q.nbytes * 2 + k.nbytes + v.nbytes)
    return prepare


def _paged_rope(seqs: list[tuple[int, int]], n_heads: int, head_dim: int, f16: bool) -> Prepare:
    """K heads of several sequences rotated at their own positions into their pool slots."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        tables, rows, flat, n_blocks = _paged_layout(seqs, rng)
        x = rng.standard_normal((len(rows), n_heads, head_dim)).astype(np.float32)
        expected = np.zeros((n_blocks * BLOCK, n_heads * head_dim))
        first = 0
        for (pos, n), table in zip(seqs, tables, strict=True):
            rotated = ref.rope(x[first : first + n], pos, 1e4, True)
            expected[_slots(table, np.arange(pos, pos + n))] = rotated.reshape(n, -1)
            first += n
        dst = ctx.empty(expected.size * (2 if f16 else 4))
        x_buf, rows_buf, table_buf = ctx.upload(x), ctx.upload(rows), ctx.upload(flat)
        record = lambda rec: ops.rope(  # noqa: E731
            rec, x_buf, dst, len(rows), n_heads, head_dim, 0, 1e4, neox=True, out_f16=f16,
            rows=rows_buf, table=table_buf, block_tokens=BLOCK)
        return _case(record, ctx, dst, expected.shape, expected, F16_TOL if f16 else 1e-4, 2 * x.nbytes,
                     dtype=np.float16 if f16 else np.float32)
    return prepare


# ---- element-wise ---------------------------------------------------------------------------------

def _gated(n: int, activation: ops.Activation) -> Prepare:
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        gate = rng.standard_normal(n).astype(np.float32) * 4
        gate[:1] = -200.0  # far tails must not produce NaN
        up = rng.standard_normal(n).astype(np.float32)
        g_buf, u_buf, out = ctx.upload(gate), ctx.upload(up), ctx.empty(gate.nbytes)
        return _case(lambda rec: ops.gated(rec, out, g_buf, u_buf, n, activation), ctx, out, (n,),
                     ref.gated(gate, up, activation), ROW_TOL, 3 * n * 4)
    return prepare


def _add_scale(n: int, n_add: int, n_scale: int) -> Prepare:
    """add then scale, each over a prefix: elements past the prefixes must stay as they were."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        x, a = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        buf, a_buf = ctx.upload(x), ctx.upload(a)
        expected = x.astype(np.float64)
        expected[:n_add] += a[:n_add]
        expected[:n_scale] *= 16.0

        def record(rec: Recorder) -> None:
            ctx.write(buf, x)  # the harness records more than once (timing): start from x each time
            ops.add(rec, buf, a_buf, n_add)
            ops.scale(rec, buf, n_scale, 16.0)
        return _case(record, ctx, buf, (n,), expected, ROW_TOL, 3 * n * 4)
    return prepare


def _add_bias(n_rows: int, width: int) -> Prepare:
    """A bias vector added to every row (qwen2's Q, K and V biases)."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        x = rng.standard_normal((n_rows, width)).astype(np.float32)
        bias = rng.standard_normal(width).astype(np.float32)
        buf, b_buf = ctx.upload(x), ctx.upload(bias)

        def record(rec: Recorder) -> None:
            ctx.write(buf, x)  # the harness records more than once (timing): start from x each time
            ops.add_bias(rec, buf, b_buf, n_rows, width)
        return _case(record, ctx, buf, x.shape, x.astype(np.float64) + bias, ROW_TOL, 2 * x.nbytes + bias.nbytes)
    return prepare


def _round(kind: ops.Rounding) -> Prepare:
    """Rounding is exact: values across 13 decades, signed zeros, f16 subnormals and ties."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        x = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-9, 4, 500),
                            [0.0, -0.0, 1e-7, 3e-5, -6.1e-5, 65504.0, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11,
                             1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8]]).astype(np.float32)
        x_buf, out = ctx.upload(x), ctx.empty(x.nbytes)
        expected = ref.round_to(x, kind)
        return Prepared(record=lambda rec: ops.round_to(rec, out, x_buf, x.size, kind),
                        read=lambda: ctx.read(out, np.float32, x.shape).astype(np.float64),
                        reference=expected.astype(np.float64), scale=0.0, tol=0.0, nbytes=2 * x.nbytes)
    return prepare


# ---- LoRA -----------------------------------------------------------------------------------------

def _lora(n_rows: int, n_in: int, n_out: int, rank: int, no_adapters: bool = False) -> Prepare:
    """Rows cycle through adapters 0..2 and none (-1); no_adapters leaves every row without one."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        n_adapters = 3
        x = rng.standard_normal((n_rows, n_in)).astype(np.float32)
        y = rng.standard_normal((n_rows, n_out)).astype(np.float32)
        lora_a = (rng.standard_normal((n_adapters, rank, n_in)) * 0.1).astype(np.float32)
        lora_b = (rng.standard_normal((n_adapters, n_out, rank)) * 0.1).astype(np.float32)
        adapter = np.array([-1 if no_adapters else (n_rows - 1 - r) % (n_adapters + 1) - 1 for r in range(n_rows)],
                           np.int32)
        # per row: sequences sharing an adapter may use it at different scales
        scales = np.array([(0.5, 2.0, 1.25, 0.75)[r % 4] for r in range(n_rows)], np.float32)
        bufs = [ctx.upload(a) for a in (x, lora_a, adapter, scales, lora_b)]
        y_buf, t_buf = ctx.upload(y), ctx.empty(n_rows * rank * 4)

        def record(rec: Recorder) -> None:
            ctx.write(y_buf, y)  # expand adds into y: start from y on every recording
            x_buf, a_buf, ad_buf, s_buf, b_buf = bufs
            ops.lora_shrink(rec, x_buf, a_buf, ad_buf, s_buf, t_buf, n_rows, n_in, rank)
            ops.lora_expand(rec, t_buf, b_buf, ad_buf, y_buf, n_rows, n_out, rank)
        expected = ref.lora(x, y, lora_a, lora_b, adapter, scales)
        return _case(record, ctx, y_buf, y.shape, expected, ROW_TOL,
                     x.nbytes + 2 * y.nbytes + lora_a[0].nbytes + lora_b[0].nbytes)
    return prepare


def _register() -> None:
    for rows, cols in [(1, 64), (3, 100), (7, 640), (2, 1000)]:
        register_case("rms_norm", "F32", f"{rows}x{cols}", _rms_norm(rows, cols))
    register_case("rms_norm", "F32", "3x96", _rms_norm(3, 96, residual=True), variant="add into residual at offsets")

    for neox, layout in [(False, "interleaved"), (True, "neox")]:
        for t, h, d, pos, base in [(1, 4, 64, 0, 1e4), (5, 3, 64, 17, 1e4), (3, 2, 256, 1000, 1e6),
                                   (2, 1, 80, 40000, 1e4)]:
            register_case("rope", "F32", f"t={t} h={h} d={d} pos={pos}", _rope(t, h, d, pos, base, neox),
                          variant=layout)
    register_case("rope", "F32", "t=4 h=2 d=64 pos=9", _rope(4, 2, 64, 9, 5e5, False, factors=True),
                  variant="interleaved, rope_freqs factors")
    register_case("rope", "F32", "t=3 h=2 d=64 pos=100", _rope(3, 2, 64, 100, 1e4, True, factors=True, mscale=1.19),
                  variant="neox, per-token factors, attn_factor (LongRoPE)")
    register_case("rope", "F16", "t=3 h=2 d=64 pos=5", _rope(3, 2, 64, 5, 1e4, True, norm=True, f16_offset=5),
                  variant="neox, head norm, f16 cache at offset")
    register_case("rope", "F32", "t=2 h=3 d=32 pos=0", _rope(2, 3, 32, 0, 1e4, False, rotate=False, f16_offset=None),
                  variant="copy without rotation")

    attention_shapes = [
        (1, 4, 4, 64, 0, 0),      # first decode step: one key
        (1, 4, 2, 64, 130, 0),    # decode at pos > 0, GQA, keys span three 64-key chunks
        (9, 4, 1, 64, 0, 0),      # prefill from 0, multi-query
        (7, 4, 2, 64, 21, 0),     # prefill continuing at pos > 0
        (12, 4, 1, 64, 3, 8),     # sliding window shorter than the prefill
        (1, 4, 1, 256, 100, 8),   # decode with a window, large head_dim
        (5, 8, 2, 96, 200, 70),   # window spanning two chunks, head_dim not a power of two
    ]
    for kv_f16, fmt in [(False, "F32"), (True, "F16")]:
        for t, nh, nkv, d, pos, win in attention_shapes:
            register_case("attention", fmt, f"t={t} heads={nh}/{nkv} d={d} pos={pos} window={win}",
                          _attention(t, nh, nkv, d, pos, win, kv_f16))
    register_case("attention", "F32", "t=2 heads=2/2 d=64 pos=70 window=0", _attention(2, 2, 2, 64, 70, 0, False, 30.0),
                  variant="scores ~1e4 (stable softmax)")

    ragged = [(0, 5), (9, 1), (2, 7), (30, 1)]  # prefills from 0 and from pos > 0, decodes; ragged lengths
    for kv_f16, fmt in [(False, "F32"), (True, "F16")]:
        register_case("attention", fmt, "4 sequences heads=4/2 d=64 window=0",
                      _paged_attention(ragged, 4, 2, 64, 0, kv_f16), variant="paged, shuffled blocks")
        register_case("rope", fmt, "4 sequences h=2 d=64", _paged_rope(ragged, 2, 64, kv_f16),
                      variant="neox, into paged KV slots")
    register_case("attention", "F16", "4 sequences heads=4/1 d=64 window=6",
                  _paged_attention(ragged, 4, 1, 64, 6, True), variant="paged, shuffled blocks, sliding window")

    for n in (1, 63, 1000, 4161):
        for activation in ("silu", "gelu"):
            register_case("gated", "F32", f"n={n}", _gated(n, activation), variant=activation)
    register_case("add_scale", "F32", "n=200", _add_scale(200, 130, 70), variant="prefixes")
    for rows, width in [(1, 256), (7, 128), (3, 1000)]:
        register_case("add_bias", "F32", f"{rows}x{width}", _add_bias(rows, width))
    for kind in ("f16", "bf16"):
        register_case("round", kind.upper(), "n=510", _round(kind))

    for rows, n_in, n_out, rank in [(1, 256, 128, 8), (5, 640, 100, 16), (3, 70, 513, 4)]:
        register_case("lora", "F32", f"{rows}x{n_in}->{n_out} r={rank}", _lora(rows, n_in, n_out, rank))
    register_case("lora", "F32", "2x64->32 r=4", _lora(2, 64, 32, 4, no_adapters=True), variant="rows without adapter")


OP_KERNELS = ("rms_norm", "rope", "attention", "gated", "add_scale", "add_bias", "round", "lora")
_register()
