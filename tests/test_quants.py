"""The quant-format table and its dequantizers, checked against gguf.quants and hand-built ggml blocks."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from host_functions.errors import ModelFormatError, UnsupportedError
from host_functions.formats.gguf_file import GGUFFile, RawTensor
from host_functions.formats.quants import QUANT_FORMATS, dequantize, quant_format, row_bytes

DATA = Path(__file__).parent / "data"

# Byte offsets of the f16 scale fields in each ggml block (ggml-common.h), written out here
# independently of the module under test so that tests can plant finite or extreme scales.
F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.F16: (0,),
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q8_0: (0,),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}
GGUF_COVERED = [T.F32, T.BF16, *F16_FIELDS]

EXTREME_F16 = np.array([0.0, -0.0, 65504.0, -65504.0, 2.0**-24, -(2.0**-24), 2.0**-14, 1.0, -1.0],
                       dtype=np.float16)

TINY_MODELS = [f"tiny-llama-{fmt}.gguf" for fmt in
               ("F16", "BF16", "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")]


def random_blocks(qtype: T, n_blocks: int, scales: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Random block bytes whose f16 fields hold `scales` (default: finite values of varied magnitude)."""
    rng = np.random.default_rng(seed)
    type_size = QUANT_FORMATS[qtype].type_size
    if qtype == T.F32:
        return rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8).reshape(n_blocks, 4)
    if qtype == T.BF16:
        wide = rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32) >> 16
        return wide.astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        if scales is None:
            values = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-4, 1, n_blocks)).astype(np.float16)
        else:
            values = rng.choice(scales, n_blocks)
        blocks[:, offset:offset + 2] = values.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def gguf_reference(blocks: np.ndarray, qtype: T) -> np.ndarray:
    """gguf.quants' dequantization of (n_blocks, type_size) bytes, as (n_blocks, block_size)."""
    if qtype in (T.F32, T.F16):  # gguf handles the plain float types by viewing the flat bytes
        return gguf.quants.dequantize(blocks.reshape(-1), qtype).reshape(len(blocks), 1)
    return gguf.quants.dequantize(blocks, qtype).reshape(len(blocks), -1)


def test_table_matches_gguf_size_table_except_stale_q8_1():
    for qtype, fmt in QUANT_FORMATS.items():
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        assert fmt.block_size == block_size, fmt.name
        if qtype == T.Q8_1:
            assert (type_size, fmt.type_size) == (40, 36)  # ggml: f16 d, f16 s, 32 int8
        else:
            assert fmt.type_size == type_size, fmt.name


def test_table_has_every_supported_format_with_lower_case_kernel_name():
    expected = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"}
    assert {fmt.name for fmt in QUANT_FORMATS.values()} == expected
    for qtype, fmt in QUANT_FORMATS.items():
        assert fmt.qtype == qtype and fmt.name == qtype.name and fmt.kernel == qtype.name.lower()
        assert quant_format(qtype) is fmt


@pytest.mark.parametrize("qtype", GGUF_COVERED, ids=lambda q: q.name)
def test_dequantize_blocks_matches_gguf_on_random_blocks(qtype):
    blocks = random_blocks(qtype, 3000)
    out = QUANT_FORMATS[qtype].dequantize_blocks(blocks)
    assert out.dtype == np.float32 and out.shape == (3000, QUANT_FORMATS[qtype].block_size)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, gguf_reference(blocks, qtype))


@pytest.mark.parametrize("qtype", list(F16_FIELDS), ids=lambda q: q.name)
def test_dequantize_blocks_matches_gguf_with_zero_and_extreme_scales(qtype):
    blocks = random_blocks(qtype, 2000, scales=EXTREME_F16, seed=1)
    out = QUANT_FORMATS[qtype].dequantize_blocks(blocks)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, gguf_reference(blocks, qtype))


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_K, T.Q6_K], ids=lambda q: q.name)
def test_all_zero_scales_give_all_zero_weights(qtype):
    blocks = random_blocks(qtype, 64, scales=np.zeros(1, np.float16))
    assert not QUANT_FORMATS[qtype].dequantize_blocks(blocks).any()


def test_q8_k_hand_built_blocks_decode_to_d_times_quants():
    qs = np.stack([np.arange(-128, 128), np.arange(127, -129, -1)]).astype(np.int8)  # (2, 256)
    d = np.array([0.5, -3.0], dtype=np.float32)
    bsums = qs.reshape(2, 16, 16).sum(axis=2).astype(np.int16)
    blocks = np.concatenate([d.view(np.uint8).reshape(2, 4), qs.view(np.uint8),
                             bsums.view(np.uint8).reshape(2, 32)], axis=1)
    assert blocks.shape == (2, 292)
    out = QUANT_FORMATS[T.Q8_K].dequantize_blocks(blocks)
    np.testing.assert_array_equal(out, qs.astype(np.float32) * d[:, None])
    # The trailing bsums only serve dot products: garbage there changes nothing.
    blocks[:, 260:] = 0xFF
    np.testing.assert_array_equal(QUANT_FORMATS[T.Q8_K].dequantize_blocks(blocks), out)


def test_q8_1_hand_built_blocks_decode_to_d_times_quants():
    qs = np.stack([np.arange(-16, 16), np.arange(0, 128, 4), np.full(32, -128)]).astype(np.int8)  # (3, 32)
    d = np.array([0.25, 2.0, -0.125], dtype=np.float16)
    s = (d.astype(np.float32) * qs.sum(axis=1)).astype(np.float16)
    blocks = np.concatenate([d.view(np.uint8).reshape(3, 2), s.view(np.uint8).reshape(3, 2),
                             qs.view(np.uint8)], axis=1)
    assert blocks.shape == (3, 36)
    out = QUANT_FORMATS[T.Q8_1].dequantize_blocks(blocks)
    np.testing.assert_array_equal(out, qs.astype(np.float32) * d.astype(np.float32)[:, None])
    assert out[2, 0] == 16.0  # -128 * -0.125


def test_dequantize_of_a_tensor_spanning_many_chunks_matches_gguf():
    rows, cols = 300, 1024  # 307200 weights: more than one chunk, ending mid-chunk
    blocks = random_blocks(T.Q4_K, rows * cols // 256, seed=2)
    tensor = RawTensor("big", T.Q4_K, (rows, cols), blocks.reshape(rows, -1))
    out = dequantize(tensor)
    assert out.shape == (rows, cols) and out.dtype == np.float32
    np.testing.assert_array_equal(out, gguf.quants.dequantize(blocks.reshape(rows, -1), T.Q4_K))


def test_dequantize_accepts_the_readers_float_views():
    values = np.linspace(-2, 2, 96, dtype=np.float32).reshape(3, 32)
    for qtype, stored in ((T.F32, values), (T.F16, values.astype(np.float16))):
        out = dequantize(RawTensor("w", qtype, (3, 32), stored))
        np.testing.assert_array_equal(out, stored.astype(np.float32))
        assert out.flags.writeable and not np.shares_memory(out, stored)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_every_tensor_of_tiny_reference_model_matches_gguf(model):
    gf = GGUFFile(DATA / model)
    for tensor in gf.tensors.values():
        out = dequantize(tensor)
        assert out.shape == tensor.shape and out.dtype == np.float32, tensor.name
        expected = gguf.quants.dequantize(tensor.data, tensor.qtype).reshape(tensor.shape)
        np.testing.assert_array_equal(out, expected, err_msg=f"{model}: {tensor.name}")


@pytest.mark.parametrize("qtype", [T.IQ2_XXS, T.IQ4_NL, T.TQ1_0, T.MXFP4, T.I8, T.F64], ids=lambda q: q.name)
def test_unsupported_type_raises_naming_type_and_tensor(qtype):
    with pytest.raises(UnsupportedError, match=f"^unsupported type {qtype.name} in tensor blk.0.attn_q.weight$"):
        quant_format(qtype, "blk.0.attn_q.weight")
    tensor = RawTensor("blk.1.ffn_up.weight", qtype, (1, 256), np.zeros((1, 256), np.uint8))
    with pytest.raises(UnsupportedError, match="blk.1.ffn_up.weight"):
        dequantize(tensor)


def test_unknown_type_number_raises_unsupported():
    with pytest.raises(UnsupportedError, match="unsupported type #999 in tensor x"):
        quant_format(999, "x")


def test_row_bytes_counts_whole_blocks():
    assert row_bytes(T.Q4_K, 1024) == 4 * 144
    assert row_bytes(T.Q8_0, 640) == 20 * 34
    assert row_bytes(T.Q8_1, 64) == 72
    assert row_bytes(T.F16, 7) == 14
    assert row_bytes(T.F32, 3) == 12


def test_row_bytes_rejects_rows_that_split_a_block():
    with pytest.raises(ModelFormatError, match="640 weights is not a multiple of the Q4_K block size 256"):
        row_bytes(T.Q4_K, 640)


def test_dequantize_rejects_bytes_that_do_not_match_the_shape():
    tensor = RawTensor("blk.0.ffn_down.weight", T.Q8_0, (2, 64), np.zeros((2, 60), np.uint8))
    with pytest.raises(ModelFormatError, match="blk.0.ffn_down.weight: 120 bytes stored"):
        dequantize(tensor)
    tensor = RawTensor("odd", T.Q4_0, (2, 48), np.zeros(54, np.uint8))
    with pytest.raises(ModelFormatError, match="not a multiple of the Q4_0 block size 32"):
        dequantize(tensor)
