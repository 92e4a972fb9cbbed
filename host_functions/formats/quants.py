"""Weight formats: one table row per GGML type, holding its block geometry and NumPy dequantizer.

Layouts are ggml's (`ggml-common.h`, `dequantize_row_*` in `ggml-quants.c`). Every dequantizer maps
an (n_blocks, type_size) uint8 array to an (n_blocks, block_size) float32 array, fully vectorized,
and does its float32 arithmetic in ggml's order (scale the integer, then subtract the min), so the
result equals ggml's and `gguf.quants`' bit for bit. Adding a format means adding a row to
`QUANT_FORMATS`, not a code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from host_functions.errors import ModelFormatError, UnsupportedError
from host_functions.formats.gguf_file import RawTensor

QK_K = 256  # weights per K-quant super-block

# Big tensors are dequantized this many weights (1 MiB of output) at a time: temporaries stay small and the
# peak memory is the output plus a few MiB, not several copies of a 600 MiB embedding.
_CHUNK_WEIGHTS = 1 << 18


@dataclass(frozen=True)
class QuantFormat:
    """One weight format: how many weights a block holds, how many bytes it takes, how to decode it."""

    name: str  # "Q4_K"
    qtype: GGMLQuantizationType
    block_size: int  # weights per block (1 for F32/F16/BF16)
    type_size: int  # bytes per block
    dequantize_blocks: Callable[[np.ndarray], np.ndarray]  # (n_blocks, type_size) u8 -> (n_blocks, block_size) f32
    kernel: str  # WGSL kernel variant name: the lower-case format name, e.g. "q4_k"


# ---------------------------------------------------------------------------------------------
# Shared byte-level helpers
# ---------------------------------------------------------------------------------------------

_SHIFTS_2BIT = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)


def _fields(blocks: np.ndarray, *sizes: int) -> list[np.ndarray]:
    """Split every block into consecutive byte fields of the given sizes (views, no copies)."""
    blocks = np.ascontiguousarray(blocks)  # `.view(float16)` on a field needs contiguous rows
    assert blocks.dtype == np.uint8 and blocks.ndim == 2 and blocks.shape[1] == sum(sizes), blocks.shape
    return np.split(blocks, np.cumsum(sizes)[:-1], axis=1)


def _f16(field: np.ndarray) -> np.ndarray:
    """(n, 2) little-endian f16 bytes -> (n, 1) float32 (exact)."""
    return field.view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, width: int) -> np.ndarray:
    """(n, m) bytes -> (n, 2m) 4-bit values: per group of `width` bytes, all low nibbles, then all high."""
    groups = qs.reshape(qs.shape[0], -1, 1, width)
    return np.concatenate([groups & 0x0F, groups >> 4], axis=2).reshape(qs.shape[0], -1)


def _crumbs(qs: np.ndarray, width: int) -> np.ndarray:
    """(n, m) bytes -> (n, 4m) 2-bit values: per group of `width` bytes, bits 0-1, then 2-3, 4-5, 6-7."""
    groups = qs.reshape(qs.shape[0], -1, 1, width)
    return ((groups >> _SHIFTS_2BIT) & 3).reshape(qs.shape[0], -1)


def _bits(field: np.ndarray) -> np.ndarray:
    """(n, m) bytes read as one little-endian 8m-bit integer -> (n, 8m) bits, bit j at position j."""
    return np.unpackbits(field, axis=1, bitorder="little")


def _bitplanes(field: np.ndarray) -> np.ndarray:
    """(n, m) bytes -> (n, 8m) bits ordered plane by plane: bit k of byte l lands at k*m + l."""
    n, m = field.shape
    return _bits(field).reshape(n, m, 8).transpose(0, 2, 1).reshape(n, 8 * m)


def _scale(q: np.ndarray, scale: np.ndarray, zero: int = 0, offset: np.ndarray | None = None) -> np.ndarray:
    """float32 `(q - zero) * scale + offset`, one scale (and offset) per equal run of weights.

    q: (n, n_weights) integers; scale, offset: (n, n_runs). The order of operations is ggml's, which
    is what makes the result bit-identical to it.
    """
    n, n_runs = scale.shape
    out = q.reshape(n, n_runs, -1).astype(np.float32)
    if zero:
        out -= np.float32(zero)  # small integers: exact, same as ggml's integer subtraction
    out *= scale.reshape(n, n_runs, 1)
    if offset is not None:
        out += offset.reshape(n, n_runs, 1)
    return out.reshape(n, -1)


# ---------------------------------------------------------------------------------------------
# Float formats (block_size 1)
# ---------------------------------------------------------------------------------------------

# F32: 4 bytes, IEEE binary32, little-endian.
def _dequantize_f32(blocks: np.ndarray) -> np.ndarray:
    (x,) = _fields(blocks, 4)
    return x.view(np.float32)


# F16: 2 bytes, IEEE binary16, little-endian.
def _dequantize_f16(blocks: np.ndarray) -> np.ndarray:
    (x,) = _fields(blocks, 2)
    return _f16(x)


# BF16: 2 bytes, the upper half of a binary32 (sign, 8-bit exponent, 7-bit mantissa).
def _dequantize_bf16(blocks: np.ndarray) -> np.ndarray:
    (x,) = _fields(blocks, 2)
    return (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------------------------
# 32-weight formats
# ---------------------------------------------------------------------------------------------

# Q4_0 (18 bytes): f16 d | qs[16]. Weight j < 16 is the low nibble of qs[j], weight j + 16 its high
# nibble; value = (q - 8) * d.
def _dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    d, qs = _fields(blocks, 2, 16)
    return _scale(_nibbles(qs, 16), _f16(d), zero=8)


# Q4_1 (20 bytes): f16 d | f16 m | qs[16] (nibbles as Q4_0); value = q * d + m.
def _dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    d, m, qs = _fields(blocks, 2, 2, 16)
    return _scale(_nibbles(qs, 16), _f16(d), offset=_f16(m))


# Q5_0 (22 bytes): f16 d | qh (u32, little-endian) | qs[16]. Nibbles as Q4_0; bit j of qh is the
# fifth bit of weight j; value = (q - 16) * d.
def _dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    d, qh, qs = _fields(blocks, 2, 4, 16)
    return _scale(_nibbles(qs, 16) | (_bits(qh) << 4), _f16(d), zero=16)


# Q5_1 (24 bytes): f16 d | f16 m | qh (u32) | qs[16] (bits as Q5_0); value = q * d + m.
def _dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    d, m, qh, qs = _fields(blocks, 2, 2, 4, 16)
    return _scale(_nibbles(qs, 16) | (_bits(qh) << 4), _f16(d), offset=_f16(m))


# Q8_0 (34 bytes): f16 d | int8 qs[32]; value = q * d.
def _dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    d, qs = _fields(blocks, 2, 32)
    return _scale(qs.view(np.int8), _f16(d))


# Q8_1 (36 bytes): f16 d | f16 s (= d * sum(qs), only used by dot products) | int8 qs[32];
# value = q * d.
def _dequantize_q8_1(blocks: np.ndarray) -> np.ndarray:
    d, _s, qs = _fields(blocks, 2, 2, 32)
    return _scale(qs.view(np.int8), _f16(d))


# ---------------------------------------------------------------------------------------------
# K-quants: 256-weight super-blocks with per-sub-block scales
# ---------------------------------------------------------------------------------------------

# Q2_K (84 bytes): scales[16] | qs[64] | f16 d | f16 dmin. 16 sub-blocks of 16 weights; scales[i]
# holds sub-block i's 4-bit scale (bits 0-3) and 4-bit min (bits 4-7). qs is two 32-byte halves;
# in half h, bits 2k..2k+1 of byte l are weight 128h + 32k + l. value = d*sc * q - dmin*mn.
def _dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    scales, qs, d, dmin = _fields(blocks, 16, 64, 2, 2)
    sc = _f16(d) * (scales & 0x0F)
    mn = _f16(dmin) * (scales >> 4)
    return _scale(_crumbs(qs, 32), sc, offset=-mn)


# Q3_K (110 bytes): hmask[32] | qs[64] | scales[12] | f16 d. The low 2 bits of each weight lie as
# in Q2_K; bit k of hmask[l] is the third bit of weight 32k + l, and a *clear* bit means "minus 4":
# q = low2 + 4*bit - 4. 16 sub-blocks of 16 weights with signed 6-bit scales stored plus 32:
#
#   byte  7 6 5 4 3 2 1 0
#   0..7  [s[i+8] lo4][s[i] lo4]                       i = byte
#   8..11 [s[j+12]hi2][s[j+8]hi2][s[j+4]hi2][s[j]hi2]  j = byte - 8
#
# value = d * (s - 32) * q.
def _q3_k_scales(scales: np.ndarray) -> np.ndarray:
    low = np.concatenate([scales[:, :8] & 0x0F, scales[:, :8] >> 4], axis=1)
    high = ((scales[:, None, 8:] >> _SHIFTS_2BIT[0]) & 3).reshape(-1, 16)
    return ((low | (high << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)


def _dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    hmask, qs, scales, d = _fields(blocks, 32, 64, 12, 2)
    q = _crumbs(qs, 32) | (_bitplanes(hmask) << 2)
    return _scale(q, _f16(d) * _q3_k_scales(scales), zero=4)


# Q4_K and Q5_K share 12 bytes of 6-bit scales sc[0..7] and mins mn[0..7] (one per 32 weights):
#
#   byte  7 6 5 4 3 2 1 0
#   0..3  [sc[i+4]hi2][sc[i]        ]   i = byte
#   4..7  [mn[i+4]hi2][mn[i]        ]   i = byte - 4
#   8..11 [mn[i+4]lo4][sc[i+4]lo4   ]   i = byte - 8
def _k4_scales_mins(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, mid, hi = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, mn


# Q4_K (144 bytes): f16 d | f16 dmin | scales[12] | qs[128]. qs is four 32-byte groups; group g's
# low nibbles are sub-block 2g, its high nibbles sub-block 2g + 1. value = d*sc * q - dmin*mn.
def _dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, qs = _fields(blocks, 2, 2, 12, 128)
    sc, mn = _k4_scales_mins(scales)
    return _scale(_nibbles(qs, 32), _f16(d) * sc, offset=-(_f16(dmin) * mn))


# Q5_K (176 bytes): f16 d | f16 dmin | scales[12] | qh[32] | qs[128]. As Q4_K, plus bit s of qh[l]
# as the fifth bit of weight 32s + l.
def _dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, qh, qs = _fields(blocks, 2, 2, 12, 32, 128)
    sc, mn = _k4_scales_mins(scales)
    q = _nibbles(qs, 32) | (_bitplanes(qh) << 4)
    return _scale(q, _f16(d) * sc, offset=-(_f16(dmin) * mn))


# Q6_K (210 bytes): ql[128] | qh[64] | int8 scales[16] | f16 d. Two halves of 128 weights; in half
# h, the low nibbles of ql[64h .. 64h+63] are weights 0..63 and the high nibbles weights 64..127,
# while bits 2k..2k+1 of qh[32h + l] are the top 2 bits of weight 32k + l. One scale per 16
# weights; value = d*scale * (q - 32).
def _dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    ql, qh, scales, d = _fields(blocks, 128, 64, 16, 2)
    q = _nibbles(ql, 64) | (_crumbs(qh, 32) << 4)
    return _scale(q, _f16(d) * scales.view(np.int8), zero=32)


# Q8_K (292 bytes): f32 d | int8 qs[256] | int16 bsums[16] (sums of 16 quants, only used by dot
# products); value = q * d.
def _dequantize_q8_k(blocks: np.ndarray) -> np.ndarray:
    d, qs, _bsums = _fields(blocks, 4, 256, 32)
    return _scale(qs.view(np.int8), d.view(np.float32))


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

def _row(qtype: GGMLQuantizationType, block_size: int, type_size: int,
         dequantize_blocks: Callable[[np.ndarray], np.ndarray]) -> QuantFormat:
    return QuantFormat(qtype.name, qtype, block_size, type_size, dequantize_blocks, qtype.name.lower())


_T = GGMLQuantizationType
# Keyed by GGML type number: a GGMLQuantizationType (an IntEnum) and its plain int find the same row.
QUANT_FORMATS: dict[int, QuantFormat] = {f.qtype: f for f in (
    _row(_T.F32, 1, 4, _dequantize_f32),
    _row(_T.F16, 1, 2, _dequantize_f16),
    _row(_T.BF16, 1, 2, _dequantize_bf16),
    _row(_T.Q4_0, 32, 18, _dequantize_q4_0),
    _row(_T.Q4_1, 32, 20, _dequantize_q4_1),
    _row(_T.Q5_0, 32, 22, _dequantize_q5_0),
    _row(_T.Q5_1, 32, 24, _dequantize_q5_1),
    _row(_T.Q8_0, 32, 34, _dequantize_q8_0),
    _row(_T.Q8_1, 32, 36, _dequantize_q8_1),  # ggml's block; gguf-py's size table (40) is stale
    _row(_T.Q2_K, QK_K, 84, _dequantize_q2_k),
    _row(_T.Q3_K, QK_K, 110, _dequantize_q3_k),
    _row(_T.Q4_K, QK_K, 144, _dequantize_q4_k),
    _row(_T.Q5_K, QK_K, 176, _dequantize_q5_k),
    _row(_T.Q6_K, QK_K, 210, _dequantize_q6_k),
    _row(_T.Q8_K, QK_K, 292, _dequantize_q8_k),
)}


def quant_format(qtype: GGMLQuantizationType | int, tensor_name: str = "?") -> QuantFormat:
    """The table row for `qtype`.

    Raises UnsupportedError naming the type and the tensor for any type without a row
    (IQ*, TQ*, MXFP4, integer types, unknown numbers).
    """
    fmt = QUANT_FORMATS.get(qtype)
    if fmt is None:
        try:
            type_name = GGMLQuantizationType(int(qtype)).name
        except ValueError:
            type_name = f"#{int(qtype)}"
        raise UnsupportedError(f"unsupported type {type_name} in tensor {tensor_name}")
    return fmt


def row_bytes(qtype: GGMLQuantizationType | int, n_cols: int, tensor_name: str = "?") -> int:
    """Bytes taken by one row of `n_cols` weights of type `qtype`.

    Raises ModelFormatError when `n_cols` is not a whole number of blocks (blocks never span rows),
    UnsupportedError for types without a row in the table.
    """
    fmt = quant_format(qtype, tensor_name)
    if n_cols % fmt.block_size:
        raise ModelFormatError(
            f"tensor {tensor_name}: row of {n_cols} weights is not a multiple of the {fmt.name} block size "
            f"{fmt.block_size}")
    return n_cols // fmt.block_size * fmt.type_size


def dequantize(tensor: RawTensor) -> np.ndarray:
    """Decode a whole tensor into a new float32 array of `tensor.shape`.

    Works in chunks of rows so temporary memory stays small. Raises UnsupportedError for types
    without a table row and ModelFormatError when the stored bytes do not match the shape.
    """
    fmt = quant_format(tensor.qtype, tensor.name)
    n_cols = tensor.shape[-1] if tensor.shape else 1
    expected = row_bytes(tensor.qtype, n_cols, tensor.name) * (tensor.n_elements // max(n_cols, 1))
    raw = tensor.raw_bytes()
    if raw.size != expected:
        raise ModelFormatError(
            f"tensor {tensor.name}: {raw.size} bytes stored, {fmt.name} {tensor.shape} needs {expected}")
    n_blocks = tensor.n_elements // fmt.block_size
    blocks = raw.reshape(n_blocks, fmt.type_size)
    out = np.empty((n_blocks, fmt.block_size), dtype=np.float32)
    step = max(1, _CHUNK_WEIGHTS // fmt.block_size)
    for start in range(0, n_blocks, step):
        out[start:start + step] = fmt.dequantize_blocks(blocks[start:start + step])
    return out.reshape(tensor.shape)
