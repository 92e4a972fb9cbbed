"""The non-matmul WGSL kernels (norm, rope, attention, element-wise, LoRA) against float64 NumPy.

Shapes deliberately include sizes that are not multiples of the 64-thread workgroup, prefill and
decode query counts at positions > 0, GQA, sliding windows and f16 KV caches.
"""

from __future__ import annotations

import numpy as np
import pytest

from host_functions.backends import op_reference as ref
from host_functions.backends import wgpu_ops as ops
from host_functions.backends.wgpu_context import GPUContext, Recorder


@pytest.fixture(scope="module")
def ctx() -> GPUContext:
    return GPUContext.get()


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def run(ctx: GPUContext, record) -> None:
    rec = Recorder(ctx)
    record(rec)
    rec.submit()


def to_f16_words(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float16).reshape(-1).view(np.uint32)


# ---- RMSNorm --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_rows,n_cols", [(1, 64), (3, 100), (7, 640), (2, 1000)])
def test_rms_norm_matches_numpy_reference(ctx, n_rows, n_cols):
    g = rng(n_cols)
    x, w = g.standard_normal((n_rows, n_cols), np.float32) * 3, g.standard_normal(n_cols, np.float32)
    out = ctx.empty(x.nbytes)
    run(ctx, lambda rec: ops.rms_norm(rec, ctx.upload(x), ctx.upload(w), out, n_rows, n_cols, 1e-6))
    np.testing.assert_allclose(ctx.read(out, np.float32, x.shape), ref.rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-5)


def test_rms_norm_adds_into_residual_and_honours_offsets(ctx):
    g = rng(1)
    x, w = g.standard_normal((5, 96), np.float32), g.standard_normal(96, np.float32)
    residual = g.standard_normal((6, 96), np.float32)
    out = ctx.upload(residual)
    # normalize rows 2..4 of x into rows 1..3 of the residual
    run(ctx, lambda rec: ops.rms_norm(rec, ctx.upload(x), ctx.upload(w), out, 3, 96, 1e-5,
                                      add=True, in_offset=2 * 96, out_offset=96))
    expected = residual.astype(np.float64)
    expected[1:4] += ref.rms_norm(x[2:5], w, 1e-5)
    np.testing.assert_allclose(ctx.read(out, np.float32, residual.shape), expected, rtol=1e-5, atol=1e-5)


# ---- rope -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("neox", [False, True], ids=["interleaved", "neox"])
@pytest.mark.parametrize("n_tokens,n_heads,head_dim,pos,base", [
    (1, 4, 64, 0, 10000.0), (5, 3, 64, 17, 10000.0), (3, 2, 256, 1000, 1e6), (2, 1, 80, 40000, 10000.0)])
def test_rope_matches_numpy_reference(ctx, neox, n_tokens, n_heads, head_dim, pos, base):
    x = rng(head_dim + pos).standard_normal((n_tokens, n_heads, head_dim), np.float32)
    out = ctx.empty(x.nbytes)
    run(ctx, lambda rec: ops.rope(rec, ctx.upload(x), out, n_tokens, n_heads, head_dim, pos, base, neox=neox))
    # f32 angles of ~4e4 rad carry ~4e-3 absolute error (llama.cpp computes them in f32 too)
    atol = 2e-4 if pos < 2000 else 2e-2
    np.testing.assert_allclose(ctx.read(out, np.float32, x.shape), ref.rope(x, pos, base, neox), atol=atol)


def test_rope_divides_angles_by_frequency_factors(ctx):
    g = rng(2)
    x = g.standard_normal((4, 2, 64), np.float32)
    factors = g.uniform(1.0, 8.0, 32).astype(np.float32)
    out = ctx.empty(x.nbytes)
    run(ctx, lambda rec: ops.rope(rec, ctx.upload(x), out, 4, 2, 64, 9, 500000.0, neox=False,
                                  factors=ctx.upload(factors)))
    np.testing.assert_allclose(ctx.read(out, np.float32, x.shape), ref.rope(x, 9, 500000.0, False, factors), atol=2e-4)


def test_rope_with_head_norm_writes_f16_at_an_offset(ctx):
    g = rng(3)
    x = g.standard_normal((3, 2, 64), np.float32) * 4
    w = g.standard_normal(64, np.float32)
    dst = ctx.empty(8 * 2 * 64 * 2)  # an f16 cache of 8 positions x 2 heads x 64
    run(ctx, lambda rec: ops.rope(rec, ctx.upload(x), dst, 3, 2, 64, 5, 10000.0, neox=True,
                                  norm_weight=ctx.upload(w), eps=1e-6, out_f16=True, dst_offset=5 * 128))
    got = ctx.read(dst, np.float16, (8, 2, 64)).astype(np.float32)
    expected = ref.rope(ref.rms_norm(x, w, 1e-6), 5, 10000.0, True)
    np.testing.assert_allclose(got[5:8], expected, rtol=2e-3, atol=2e-3)
    assert not got[:5].any()


def test_rope_without_rotation_copies_rows_into_an_f32_cache(ctx):
    x = rng(4).standard_normal((2, 3, 32), np.float32)
    dst = ctx.empty(4 * 96 * 4)
    run(ctx, lambda rec: ops.rope(rec, ctx.upload(x), dst, 2, 3, 32, 0, 10000.0, neox=False, rotate=False,
                                  dst_offset=96))
    got = ctx.read(dst, np.float32, (4, 3, 32))
    np.testing.assert_array_equal(got[1:3], x)


# ---- attention ------------------------------------------------------------------------------------

def attention_case(ctx, n_tokens, n_head, n_head_kv, head_dim, pos, window, kv_f16, capacity=None, seed=0):
    g = rng(seed)
    capacity = capacity or pos + n_tokens + 3
    q = g.standard_normal((n_tokens, n_head, head_dim), np.float32)
    k = g.standard_normal((capacity, n_head_kv, head_dim), np.float32) * 2
    v = g.standard_normal((capacity, n_head_kv, head_dim), np.float32)
    k[pos + n_tokens :] = 1e30  # positions past the queries must never be read
    v[pos + n_tokens :] = np.nan
    if kv_f16:
        k, v = np.minimum(k, 6e4).astype(np.float16), v.astype(np.float16)
        k_buf, v_buf = ctx.upload(to_f16_words(k)), ctx.upload(to_f16_words(v))
    else:
        k_buf, v_buf = ctx.upload(k), ctx.upload(v)
    out = ctx.empty(q.nbytes)
    scale = head_dim ** -0.5
    run(ctx, lambda rec: ops.attention(rec, ctx.upload(q), k_buf, v_buf, out, n_tokens, n_head, n_head_kv,
                                       head_dim, pos, window, scale, kv_f16=kv_f16))
    got = ctx.read(out, np.float32, q.shape)
    expected = ref.attention(q, k.astype(np.float32), v.astype(np.float32), pos, window, scale, round_f16=kv_f16)
    return got, expected


@pytest.mark.parametrize("n_tokens,n_head,n_head_kv,head_dim,pos,window", [
    (1, 4, 4, 64, 0, 0),      # first decode step: one key
    (1, 4, 2, 64, 130, 0),    # decode at pos > 0, GQA, keys span three 64-key chunks
    (9, 4, 1, 64, 0, 0),      # prefill from 0, multi-query
    (7, 4, 2, 64, 21, 0),     # prefill continuing at pos > 0
    (12, 4, 1, 64, 3, 8),     # sliding window shorter than the prefill
    (1, 4, 1, 256, 100, 8),   # decode with a window, large head_dim
    (5, 8, 2, 96, 200, 70),   # window spanning two chunks, head_dim not a power of two
])
@pytest.mark.parametrize("kv_f16", [False, True], ids=["f32kv", "f16kv"])
def test_attention_matches_numpy_reference(ctx, n_tokens, n_head, n_head_kv, head_dim, pos, window, kv_f16):
    got, expected = attention_case(ctx, n_tokens, n_head, n_head_kv, head_dim, pos, window, kv_f16)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 if not kv_f16 else 1e-4)


def test_attention_softmax_is_stable_for_huge_scores(ctx):
    # scores of ~1e4 overflow a naive exp(); the running-max softmax must stay finite and exact
    g = rng(5)
    q = g.standard_normal((2, 2, 64), np.float32) * 100
    k = g.standard_normal((80, 2, 64), np.float32) * 100
    v = g.standard_normal((80, 2, 64), np.float32)
    out = ctx.empty(q.nbytes)
    run(ctx, lambda rec: ops.attention(rec, ctx.upload(q), ctx.upload(k), ctx.upload(v), out, 2, 2, 2, 64, 70, 0, 1.0))
    got = ctx.read(out, np.float32, q.shape)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref.attention(q, k, v, 70, 0, 1.0), rtol=1e-4, atol=1e-4)


# ---- element-wise ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 63, 1000, 4161])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_activation_matches_numpy_reference(ctx, n, activation):
    g = rng(n)
    gate, up = g.standard_normal(n, np.float32) * 4, g.standard_normal(n, np.float32)
    gate[:1] = -200.0  # far tails must not produce NaN
    out = ctx.empty(gate.nbytes)
    run(ctx, lambda rec: ops.gated(rec, out, ctx.upload(gate), ctx.upload(up), n, activation))
    np.testing.assert_allclose(ctx.read(out, np.float32, (n,)), ref.gated(gate, up, activation), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_rounding_to_half_precision_is_nearest_even_like_ggml(ctx, kind):
    g = rng(8)
    x = np.concatenate([g.standard_normal(500, np.float32) * 10.0 ** g.integers(-9, 4, 500),
                        np.float32([0.0, -0.0, 1e-7, 3e-5, -6.1e-5, 65504.0, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11])])
    x = x.astype(np.float32)
    out = ctx.empty(x.nbytes)
    run(ctx, lambda rec: ops.round_to(rec, out, ctx.upload(x), x.size, kind))
    np.testing.assert_array_equal(ctx.read(out, np.float32, x.shape), ref.round_to(x, kind))


def test_add_and_scale_touch_only_the_first_n_elements(ctx):
    g = rng(6)
    x, a = g.standard_normal(200, np.float32), g.standard_normal(200, np.float32)
    buf = ctx.upload(x)

    def record(rec):
        ops.add(rec, buf, ctx.upload(a), 130)
        ops.scale(rec, buf, 70, 16.0)
    run(ctx, record)
    expected = x.copy()
    expected[:130] += a[:130]
    expected[:70] *= 16.0
    np.testing.assert_allclose(ctx.read(buf, np.float32, (200,)), expected, rtol=1e-6)


# ---- LoRA -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_rows,n_in,n_out,rank", [(1, 256, 128, 8), (5, 640, 100, 16), (3, 70, 513, 4)])
def test_lora_shrink_expand_matches_numpy_reference(ctx, n_rows, n_in, n_out, rank):
    g = rng(n_in + n_out)
    n_adapters = 3
    x = g.standard_normal((n_rows, n_in), np.float32)
    y = g.standard_normal((n_rows, n_out), np.float32)
    lora_a = g.standard_normal((n_adapters, rank, n_in), np.float32) * 0.1
    lora_b = g.standard_normal((n_adapters, n_out, rank), np.float32) * 0.1
    adapter = np.array([(r % (n_adapters + 1)) - 1 for r in range(n_rows)], np.int32)[::-1].copy()  # includes -1
    scales = np.array([0.5, 2.0, 1.25], np.float32)
    y_buf, t_buf, ad_buf = ctx.upload(y), ctx.empty(n_rows * rank * 4), ctx.upload(adapter)

    def record(rec):
        ops.lora_shrink(rec, ctx.upload(x), ctx.upload(lora_a), ad_buf, ctx.upload(scales), t_buf, n_rows, n_in, rank)
        ops.lora_expand(rec, t_buf, ctx.upload(lora_b), ad_buf, y_buf, n_rows, n_out, rank)
    run(ctx, record)
    expected = ref.lora(x, y, lora_a, lora_b, adapter, scales)
    np.testing.assert_allclose(ctx.read(y_buf, np.float32, y.shape), expected, rtol=1e-4, atol=1e-5)


def test_lora_leaves_rows_without_adapter_untouched(ctx):
    g = rng(7)
    x, y = g.standard_normal((2, 64), np.float32), g.standard_normal((2, 32), np.float32)
    adapter = np.array([-1, -1], np.int32)
    y_buf, ad_buf, t_buf = ctx.upload(y), ctx.upload(adapter), ctx.empty(2 * 4 * 4)

    def record(rec):
        ops.lora_shrink(rec, ctx.upload(x), ctx.upload(np.ones((1, 4, 64), np.float32)), ad_buf,
                        ctx.upload(np.ones(1, np.float32)), t_buf, 2, 64, 4)
        ops.lora_expand(rec, t_buf, ctx.upload(np.ones((1, 32, 4), np.float32)), ad_buf, y_buf, 2, 32, 4)
    run(ctx, record)
    np.testing.assert_array_equal(ctx.read(y_buf, np.float32, y.shape), y)
