"""Kernel-harness cases of the native CPU kernels, with their NumPy references.

`realm kernels test --backend cpu` and tests/test_cpu_kernels.py run these on the library variant the
CPU gets (REALM_CPU_KERNELS=portable forces the plain C one). The products:

- `quantize`: activation rows encoded as the type llama.cpp pairs with each weight format (Q8_0, Q8_1,
  Q8_K, or float rows rounded to F16/BF16), byte for byte against the NumPy encoders below.
- `matmul`: y = x @ W.T for every weight format against float64 NumPy: the weights dequantized by
  gguf.quants (the outside oracle), the activations rounded by the NumPy encoders, and the f16 s of Q8_1
  used for the min term exactly as llama.cpp uses it. What remains is float32 rounding of per-block
  products and their sums, measured against `matmul_scale`.

And the row-wise ops the cpu backend runs natively in place of NumpyBackend's NumPy code:

- `rms_norm`: against the float64 definition (op_reference), per element within NORM_TOL of its size.
- `gated`: SiLU(gate) * up and GELU-tanh(gate) * up over a fused gate|up row, against float64, per
  element within GATED_TOL of its size (plus a floor for the clamped exp's tiny tails).
- `rope`: NeoX and interleaved, against NumpyBackend's `rope` bit for bit (the same float32 operations).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
from gguf import GGMLQuantizationType

from host_functions import native
from host_functions.backends.numpy_backend import RopeAngles, rope, round_to_bf16, round_to_f16
from host_functions.formats.quants import QK_K, QUANT_FORMATS
from host_functions.kernel_tests import op_reference
from host_functions.kernel_tests.harness import Prepared, register_case
from host_functions.kernel_tests.inputs import (
    F32_EPS,
    FLOAT_FORMATS,
    MATMUL_FORMATS,
    random_weight,
    reference_dequantize,
)

# llama.cpp's vec_dot_type: what each weight format's dot product multiplies against.
ACTIVATION_TYPE: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16",
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1", "Q8_1": "Q8_1",
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K", "Q8_K": "Q8_K",
}

# Byte ranges of the quants in the formats whose min is a separate float term: zeroing them leaves a
# block that decodes to its min offsets, whose size bounds that term's rounding error.
_QUANT_BYTES = {"Q4_1": (4, 20), "Q5_1": (4, 24), "Q2_K": (16, 80), "Q4_K": (16, 144), "Q5_K": (16, 176)}


class CpuKernelContext:
    """What the harness runs cpu cases on: one loaded kernel library (the GPU context's stand-in)."""

    has_subgroups = False
    has_f16 = False

    def __init__(self, kernels: native.Kernels) -> None:
        self.kernels = kernels

    @classmethod
    def create(cls, threads: int | None = None) -> CpuKernelContext:
        """The process's library (REALM_CPU_KERNELS respected); BackendError if it cannot be built."""
        return cls(native.load(threads))

    @property
    def adapter_name(self) -> str:
        return f"cpu kernels ({self.kernels.variant.name}, {self.kernels.threads} threads)"

    @contextlib.contextmanager
    def recorder(self) -> Iterator[None]:
        yield None  # cpu kernels run when called: there is nothing to record or submit


# ---------------------------------------------------------------------------------------------
# NumPy activation encoders: the reference for quantize.c (llama.cpp's x86 rounding)
# ---------------------------------------------------------------------------------------------

def _q8_blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) float32 -> d (n, k/32) float32 and q (n, k/32, 32) int8: q = round_half_even(x * 127 / amax)."""
    blocks = x.reshape(x.shape[0], -1, 32)
    amax = np.max(np.abs(blocks), axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    return (amax / np.float32(127))[..., 0], np.rint(blocks * inv).astype(np.int8)


def _encode_q8_0(x: np.ndarray) -> np.ndarray:
    d, q = _q8_blocks(x)
    return np.concatenate([d.astype(np.float16)[..., None].view(np.uint8), q.view(np.uint8)], axis=-1)


def _encode_q8_1(x: np.ndarray) -> np.ndarray:
    d, q = _q8_blocks(x)
    s = d * q.astype(np.int32).sum(axis=-1).astype(np.float32)
    halves = [v.astype(np.float16)[..., None].view(np.uint8) for v in (d, s)]
    return np.concatenate([*halves, q.view(np.uint8)], axis=-1)


def _encode_q8_k(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_K_ref: scale -127 / (the x of largest |x|), clamp at 127, per-16 sums."""
    blocks = x.reshape(x.shape[0], -1, QK_K)
    at = np.argmax(np.abs(blocks), axis=-1)[..., None]
    peak = np.take_along_axis(blocks, at, axis=-1)  # (n, nb, 1), signed
    zero = peak == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / peak).astype(np.float32)
        d = np.where(zero, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    q = np.minimum(np.rint(blocks * iscale), 127).astype(np.int8)
    bsums = q.reshape(*q.shape[:2], 16, 16).astype(np.int16).sum(axis=-1, dtype=np.int16)
    return np.concatenate([d.view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)], axis=-1)


def _encode_floats(rounding: Callable[[np.ndarray], np.ndarray] | None) -> Callable[[np.ndarray], np.ndarray]:
    def encode(x: np.ndarray) -> np.ndarray:
        values = x if rounding is None else rounding(x)
        return np.ascontiguousarray(values, np.float32).view(np.uint8)
    return encode


ENCODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q8_0": _encode_q8_0, "Q8_1": _encode_q8_1, "Q8_K": _encode_q8_k,
    "F32": _encode_floats(None), "F16": _encode_floats(round_to_f16), "BF16": _encode_floats(round_to_bf16),
}


def encode_activations(weight_fmt: str, x: np.ndarray) -> np.ndarray:
    """(n, k) float32 -> (n, row_bytes) uint8: the activation rows paired with `weight_fmt`, as ggml lays them out."""
    encoded = ENCODERS[ACTIVATION_TYPE[weight_fmt]](np.ascontiguousarray(x, np.float32))
    return encoded.reshape(x.shape[0], -1)


def decode_activations(weight_fmt: str, encoded: np.ndarray, k: int) -> np.ndarray:
    """The float values an encoded activation row stands for: (n, k) float64."""
    act = ACTIVATION_TYPE[weight_fmt]
    if act in FLOAT_FORMATS:
        return encoded.view(np.float32).reshape(-1, k).astype(np.float64)
    fmt = QUANT_FORMATS[GGMLQuantizationType[act]]
    return fmt.dequantize_blocks(encoded.reshape(-1, fmt.type_size)).reshape(-1, k).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# The matmul reference
# ---------------------------------------------------------------------------------------------

def reference_matmul(weight_fmt: str, w_ref: np.ndarray, w_blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float64 x @ W.T with x rounded as llama.cpp rounds it for `weight_fmt`.

    For Q4_1 / Q5_1 llama.cpp adds m_w * s_x per block, with s_x the f16-rounded d_x * sum(q_x), not
    the exact sum of the decoded activations: the difference is added here. w_blocks: the weight's raw
    (n_rows, row_bytes) uint8.
    """
    k = w_ref.shape[1]
    encoded = encode_activations(weight_fmt, x)
    x_ref = decode_activations(weight_fmt, encoded, k)
    out = x_ref @ w_ref.T
    if ACTIVATION_TYPE[weight_fmt] == "Q8_1" and weight_fmt != "Q8_1":
        n_blocks = k // 32
        s = encoded.reshape(x.shape[0], n_blocks, 36)[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        exact = x_ref.reshape(x.shape[0], n_blocks, 32).sum(axis=-1)
        m = w_blocks.reshape(w_ref.shape[0], n_blocks, -1)[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        out += (s - exact) @ m.T
    return out


def matmul_scale(weight_fmt: str, tensor_blocks: np.ndarray, w_ref: np.ndarray, x_ref: np.ndarray) -> np.ndarray:
    """sqrt(K) * sum_c |x_c| (|w_rc| + |min_rc|) per output: the size of its float32 rounding error.

    As the GPU harness's `matmul_tolerance_scale`, plus the min offsets of the formats that subtract
    them as a separate float term (their rounding is relative to the min term, not to the weight).
    """
    magnitude = np.abs(w_ref)
    if weight_fmt in _QUANT_BYTES:
        start, end = _QUANT_BYTES[weight_fmt]
        fmt = QUANT_FORMATS[GGMLQuantizationType[weight_fmt]]
        zeroed = tensor_blocks.reshape(-1, fmt.type_size).copy()
        zeroed[:, start:end] = 0
        magnitude = magnitude + np.abs(fmt.dequantize_blocks(zeroed).reshape(w_ref.shape).astype(np.float64))
    return math.sqrt(w_ref.shape[1]) * (np.abs(x_ref) @ magnitude.T)


# Observed max |err| / scale over the suite (every format, shape, scale regime) is about 0.1 eps;
# 2 eps, as for the WGSL kernels, leaves a wide margin and still fails any layout or scale mistake.
MATMUL_TOL = 2 * F32_EPS


def _matmul_prepare(fmt: str, n_rows: int, n_cols: int, n_tokens: int, mode: str = "normal",
                    ) -> Callable[[CpuKernelContext, np.random.Generator], Prepared]:
    def prepare(ctx: CpuKernelContext, rng: np.random.Generator) -> Prepared:
        tensor = random_weight(fmt, n_rows, n_cols, rng, mode)
        blocks = tensor.raw_bytes().reshape(n_rows, -1)
        w_ref = reference_dequantize(tensor)
        x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
        x_ref = decode_activations(fmt, encode_activations(fmt, x), n_cols)
        out: list[np.ndarray] = []
        return Prepared(
            record=lambda rec: out.append(ctx.kernels.matmul([(int(tensor.qtype), blocks)], n_cols, x)),
            read=lambda: out[-1],
            reference=reference_matmul(fmt, w_ref, blocks, x),
            scale=matmul_scale(fmt, blocks, w_ref, x_ref), tol=MATMUL_TOL,
            nbytes=blocks.nbytes + x.nbytes + n_tokens * n_rows * 4,
        )
    return prepare


def _quantize_prepare(fmt: str, n_tokens: int, n_cols: int, mode: str
                      ) -> Callable[[CpuKernelContext, np.random.Generator], Prepared]:
    def prepare(ctx: CpuKernelContext, rng: np.random.Generator) -> Prepared:
        x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
        if mode == "zero blocks":  # an all-zero block takes the amax == 0 branch
            x[:, : max(32, n_cols // 2)] = 0.0
        elif mode == "ties":  # amax = 31.75 makes the scale exactly 4, so x on 1/8 steps hits .5 ties
            x = (np.round(x * 8) / 8).astype(np.float32)
            x[:, ::32] = np.where(x[:, ::32] < 0, -31.75, 31.75)
        out: list[np.ndarray] = []
        qtype = int(GGMLQuantizationType[fmt])
        return Prepared(
            record=lambda rec: out.append(ctx.kernels.quantize_activations(qtype, x)),
            read=lambda: out[-1].astype(np.float64),
            reference=encode_activations(fmt, x).astype(np.float64),
            scale=1.0, tol=0.0,  # byte for byte
            nbytes=x.nbytes + encode_activations(fmt, x).nbytes,
        )
    return prepare


# ---------------------------------------------------------------------------------------------
# Row-wise ops: rms_norm, gated activations, rope
# ---------------------------------------------------------------------------------------------

# The float32 steps of a norm (the mean, + eps, sqrt, 1/x, x * scale, * w) each round by half an ulp
# and the squares summed in double add nothing visible: under 3 ulp of the value, 2 eps leaves a
# little room. A wrong sum order or a float32 accumulator of a long row still passes; a wrong eps,
# weight or width does not.
NORM_TOL = 2 * F32_EPS
# e^x within ~2 ulp, then 1 + e, a division and the product with up: about 4 ulp (observed ~1.5) of
# the value, times 1 + |z| for GELU's exponent z = -2u: u is rounded to float32 before e^z, and that
# rounding moves e^z by |z| times its relative size (in any float32 GELU; NumPy's too). See gated_scale.
GATED_TOL = 4 * F32_EPS


def gated_scale(gate_up: np.ndarray, activation: str, reference: np.ndarray) -> np.ndarray:
    """What GATED_TOL is relative to, per output: |value| (1 + |z|), z = -2u for GELU (0 for SiLU,
    whose exponent -x is exact), plus 2^-50 |x up| for the float64 reference's own 1 + tanh u
    cancellation (it is 0 where GELU is below 1e-16 |x|), plus 1e-30 where the clamped exp leaves
    ~1e-37 in place of an underflow."""
    n_ff = gate_up.shape[1] // 2
    x, up = gate_up[:, :n_ff].astype(np.float64), gate_up[:, n_ff:].astype(np.float64)
    z = 2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x**3) if activation == "gelu" else np.zeros_like(x)
    return np.abs(reference) * (1 + np.abs(z)) + (2.0**-50 * np.abs(x * up) + 1e-30) / GATED_TOL


def _rms_norm_prepare(n_rows: int, n_cols: int) -> Callable[[CpuKernelContext, np.random.Generator], Prepared]:
    def prepare(ctx: CpuKernelContext, rng: np.random.Generator) -> Prepared:
        x = rng.standard_normal((n_rows, n_cols)).astype(np.float32) * 3
        w = rng.standard_normal(n_cols).astype(np.float32)
        out: list[np.ndarray] = []
        reference = op_reference.rms_norm(x, w, 1e-6)
        return Prepared(record=lambda rec: out.append(ctx.kernels.rms_norm(x, w, 1e-6)), read=lambda: out[-1],
                        reference=reference, scale=np.abs(reference), tol=NORM_TOL, nbytes=3 * x.nbytes)
    return prepare


def gated_inputs(rng: np.random.Generator, n_rows: int, n_ff: int, mode: str = "normal") -> np.ndarray:
    """A fused (n_rows, 2 n_ff) gate|up output; "extreme" puts gates out to +-100 and exact zeros in."""
    gate_up = rng.standard_normal((n_rows, 2 * n_ff)).astype(np.float32) * 3
    if mode == "extreme":
        gate_up[:, :n_ff] = rng.uniform(-100, 100, (n_rows, n_ff)).astype(np.float32)
        gate_up[:, : n_ff : 7] = 0.0
    return gate_up


def _gated_prepare(activation: str, n_rows: int, n_ff: int, mode: str
                   ) -> Callable[[CpuKernelContext, np.random.Generator], Prepared]:
    def prepare(ctx: CpuKernelContext, rng: np.random.Generator) -> Prepared:
        gate_up = gated_inputs(rng, n_rows, n_ff, mode)
        out: list[np.ndarray] = []
        reference = op_reference.gated(gate_up[:, :n_ff], gate_up[:, n_ff:], activation)
        return Prepared(record=lambda rec: out.append(ctx.kernels.gated(gate_up, activation)), read=lambda: out[-1],
                        reference=reference, scale=gated_scale(gate_up, activation, reference), tol=GATED_TOL,
                        nbytes=gate_up.nbytes * 3 // 2)
    return prepare


def rope_inputs(rng: np.random.Generator, n_tok: int, n_head: int, hd: int, pos: int, base: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heads x (n_tok, n_head, hd) at positions pos.. and their cos/sin from NumpyBackend's tables."""
    x = rng.standard_normal((n_tok, n_head, hd)).astype(np.float32)
    inv_freq = {base: base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)}
    cos, sin = RopeAngles(np.arange(pos, pos + n_tok), inv_freq).of_base(base)
    return x, cos, sin


def _rope_prepare(layout: str, n_tok: int, n_head: int, hd: int, pos: int
                  ) -> Callable[[CpuKernelContext, np.random.Generator], Prepared]:
    def prepare(ctx: CpuKernelContext, rng: np.random.Generator) -> Prepared:
        x, cos, sin = rope_inputs(rng, n_tok, n_head, hd, pos, 1e4)
        out: list[np.ndarray] = []
        return Prepared(record=lambda rec: out.append(ctx.kernels.rope(x, cos, sin, layout)), read=lambda: out[-1],
                        reference=rope(x, cos, sin, layout).astype(np.float64), scale=1.0, tol=0.0,  # bit for bit
                        nbytes=2 * x.nbytes + cos.nbytes + sin.nbytes)
    return prepare


def _min_cols(fmt: str) -> int:
    return max(16, QUANT_FORMATS[GGMLQuantizationType[fmt]].block_size)


def _register() -> None:
    for fmt in MATMUL_FORMATS:
        short = _min_cols(fmt)
        k = max(512, short)
        # 37 rows: not a multiple of the 4-row tile, nor of any thread split
        for t in (1, 2, 3, 5, 16):
            register_case("matmul", fmt, f"37x{k} t={t}", _matmul_prepare(fmt, 37, k, t), backend="cpu")
        register_case("matmul", fmt, f"21x{k} t=20", _matmul_prepare(fmt, 21, k, 20), backend="cpu")
        register_case("matmul", fmt, f"100x{short} t=2", _matmul_prepare(fmt, 100, short, 2), backend="cpu")
        register_case("matmul", fmt, f"3x{short + k} t=7", _matmul_prepare(fmt, 3, short + k, 7), backend="cpu")
        for mode in ("zero", "extreme"):
            register_case("matmul", fmt, f"13x{k} t=2", _matmul_prepare(fmt, 13, k, 2, mode),
                          variant=f"{mode} scales", backend="cpu")
        register_case("matmul", fmt, "19x4096 t=1", _matmul_prepare(fmt, 19, 4096, 1), quick=False, backend="cpu")
        # bandwidth figures: a 2048 x 2048 matrix-vector product and a 64-token prefill tile
        register_case("matmul", fmt, "2048x2048 t=1", _matmul_prepare(fmt, 2048, 2048, 1), quick=False,
                      backend="cpu")
        register_case("matmul", fmt, "2048x2048 t=64", _matmul_prepare(fmt, 2048, 2048, 64), quick=False,
                      backend="cpu")
    for fmt in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q4_K"):  # one weight format per activation type
        act = ACTIVATION_TYPE[fmt]
        for mode in ("random", "zero blocks", "ties"):
            register_case("quantize", act, "5x512", _quantize_prepare(fmt, 5, 512, mode), variant=mode,
                          backend="cpu")
    # widths not a multiple of any vector width; 17 x 2049 is enough work to be split over the threads
    for rows, cols in ((1, 640), (5, 643), (17, 2049), (3, 7), (32, 256)):
        register_case("rms_norm", "F32", f"{rows}x{cols}", _rms_norm_prepare(rows, cols), backend="cpu")
    for activation in ("silu", "gelu"):
        for rows, n_ff in ((1, 2048), (4, 1001), (17, 2049)):
            register_case("gated", "F32", f"n={rows} n_ff={n_ff}", _gated_prepare(activation, rows, n_ff, "normal"),
                          variant=activation, backend="cpu")
        register_case("gated", "F32", "n=3 n_ff=515", _gated_prepare(activation, 3, 515, "extreme"),
                      variant=f"{activation} extreme gates", backend="cpu")
    for layout in ("neox", "interleaved"):
        for n_tok, n_head, hd, pos in ((1, 4, 256, 3000), (5, 3, 64, 0), (17, 2, 34, 100)):
            register_case("rope", "F32", f"t={n_tok} h={n_head} d={hd} pos={pos}",
                          _rope_prepare(layout, n_tok, n_head, hd, pos), variant=layout, backend="cpu")


_register()
