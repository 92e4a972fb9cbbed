"""Random kernel inputs in every weight format, the outside oracle's dequantization, and tolerances."""

from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from host_functions.formats.gguf_file import RawTensor
from host_functions.formats.quants import QUANT_FORMATS

F32_EPS = float(np.finfo(np.float32).eps)

# Where each format keeps its float scales: (byte offset in the block, "f16" | "f32"). Random
# bytes fill every block; these fields are then overwritten with controlled values so that the
# cases can choose ordinary, zero or extreme scales (random f16 bytes would include inf/NaN).
SCALE_FIELDS: dict[str, tuple[tuple[int, str], ...]] = {
    "Q4_0": ((0, "f16"),), "Q4_1": ((0, "f16"), (2, "f16")),
    "Q5_0": ((0, "f16"),), "Q5_1": ((0, "f16"), (2, "f16")),
    "Q8_0": ((0, "f16"),), "Q8_1": ((0, "f16"), (2, "f16")),
    "Q2_K": ((80, "f16"), (82, "f16")), "Q3_K": ((108, "f16"),),
    "Q4_K": ((0, "f16"), (2, "f16")), "Q5_K": ((0, "f16"), (2, "f16")),
    "Q6_K": ((208, "f16"),), "Q8_K": ((0, "f32"),),
}
FLOAT_FORMATS = ("F32", "F16", "BF16")
MATMUL_FORMATS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                  "Q8_K", "F16", "BF16", "F32")

# Scale regimes: ordinary (log-uniform 1e-3..1e-2, both signs), zero, and extreme (the largest
# finite f16 mixed with f16 subnormals, which some GPUs flush to zero but llama.cpp keeps).
SCALE_MODES = ("normal", "zero", "extreme")


def random_weight(fmt_name: str, n_rows: int, n_cols: int, rng: np.random.Generator,
                  mode: str = "normal") -> RawTensor:
    """A (n_rows, n_cols) tensor of format `fmt_name` with random ggml blocks and `mode` scales."""
    qtype = GGMLQuantizationType[fmt_name]
    if fmt_name in FLOAT_FORMATS:
        values = _random_floats(rng, n_rows * n_cols, mode).reshape(n_rows, n_cols)
        data = {"F32": lambda v: v, "F16": lambda v: v.astype(np.float16),
                "BF16": lambda v: gguf_quants.quantize(v, qtype)}[fmt_name](values)
        return RawTensor(f"random_{fmt_name}", qtype, (n_rows, n_cols), np.ascontiguousarray(data))
    fmt = QUANT_FORMATS[qtype]
    n_blocks = n_rows * n_cols // fmt.block_size
    blocks = rng.integers(0, 256, (n_blocks, fmt.type_size), dtype=np.uint8)
    for offset, kind in SCALE_FIELDS[fmt_name]:
        dtype = np.float16 if kind == "f16" else np.float32
        values = _random_floats(rng, n_blocks, mode).astype(dtype)
        blocks[:, offset:offset + values.itemsize] = values.view(np.uint8).reshape(n_blocks, -1)
    return RawTensor(f"random_{fmt_name}", qtype, (n_rows, n_cols),
                     blocks.reshape(n_rows, n_cols // fmt.block_size * fmt.type_size))


def reference_dequantize(tensor: RawTensor) -> np.ndarray:
    """float64 weights: gguf.quants (the outside oracle) where it knows the type, else our table
    (Q8_1, Q8_K: activation formats gguf-py cannot decode; quants.py's tests pin them to ggml)."""
    raw = tensor.raw_bytes().reshape(tensor.shape[0], -1)
    if tensor.qtype in (GGMLQuantizationType.Q8_1, GGMLQuantizationType.Q8_K):
        fmt = QUANT_FORMATS[tensor.qtype]
        values = fmt.dequantize_blocks(raw.reshape(-1, fmt.type_size))
    else:
        values = gguf_quants.dequantize(raw, tensor.qtype)
    return np.asarray(values, dtype=np.float64).reshape(tensor.shape)


def matmul_tolerance_scale(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sqrt(K) * sum_c |w[r, c] * x[t, c]| for every output (t, r): the size of its f32 rounding error.

    The kernel dequantizes each weight in f32 (at most three roundings, each relative to a term
    no larger than |w| plus the block's min offset) and sums K products in f32, in chunks per
    invocation and then a tree. Every rounding is at most eps times a partial sum, and partial sums
    are bounded by sum_c |w x|; on random data the K roundings add like a random walk, hence
    sqrt(K). Per-output scales (not one global max) keep rows of tiny weights as strictly checked as
    rows of large ones, which matters with the extreme-scale cases.
    """
    k = w.shape[-1]
    return math.sqrt(k) * (np.abs(x.astype(np.float64)) @ np.abs(w).T)


# Observed max |err| / scale over the whole suite (every format, shape, scale regime) is 0.15 eps;
# 2 eps leaves a 13x margin.
# A single quant off by one in a 512-weight Q4_K row moves its result by ~4e-6 of this scale, 17x
# the tolerance (test_kernels_matmul checks it). That margin shrinks like K^-1.5 for one isolated
# wrong quant; layout bugs (wrong offsets, shifts, scales) corrupt every block and fail at any K.
MATMUL_TOL = 2 * F32_EPS
GATHER_TOL = 4 * F32_EPS  # a dequantized weight is a product of at most three rounded f32 factors


def _random_floats(rng: np.random.Generator, n: int, mode: str) -> np.ndarray:
    if mode == "zero":
        return np.zeros(n, np.float32)
    if mode == "extreme":
        big = rng.choice([-65504.0, 65504.0, -32768.0, 60000.0], n)
        tiny = rng.choice([-1, 1], n) * rng.integers(1, 1024, n) * 2.0 ** -24  # f16 subnormals
        return np.where(rng.random(n) < 0.5, big, tiny).astype(np.float32)
    # one decade, as in real models: the scales of one row's blocks are alike
    return (rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-3, -2, n)).astype(np.float32)
