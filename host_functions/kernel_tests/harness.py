"""The kernel test harness: every WGSL kernel against a float64 NumPy reference, as a registry of cases.

`realm kernels test` and the pytest suites run the same cases. A case names a kernel, a format and a
shape, and knows how to prepare one run:

    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        ...upload inputs...
        return Prepared(record=lambda rec: my_op(rec, ...),      # records the dispatches
                        read=lambda: ctx.read(out, np.float32, shape),
                        reference=ref_float64, scale=error_scale, tol=1e-5, nbytes=bytes_moved)

    register_case("rms_norm", "F32", "7x640", prepare)       # at import time of your module

A case passes when every output is finite where the reference is, and max|got - ref| <= tol * scale
(`scale` says what the error is relative to; see `matmul_tolerance_scale` for the matmul argument).
Cases of other kernel families live in their own modules: add the module's import path to
`CASE_MODULES` and call `register_case` at its top level. `run_cases()` imports them, runs every
selected case and returns `CaseResult`s; it never raises for a failing kernel (the error becomes the
result's `error`), so one broken kernel cannot hide the others.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from host_functions.backends.wgpu import weight_kernels as kernels
from host_functions.backends.wgpu.context import GPUContext, Recorder
from host_functions.errors import RealmError
from host_functions.formats.gguf_file import RawTensor
from host_functions.formats.quants import QUANT_FORMATS

# Modules that register cases of other kernel families when imported (add yours here).
CASE_MODULES: list[str] = ["host_functions.kernel_tests.wgpu_op_cases", "host_functions.kernel_tests.cpu_cases"]
BACKENDS = ("wgpu", "cpu")  # which kernels a case runs: the WGSL ones, or the native CPU library

F32_EPS = float(np.finfo(np.float32).eps)


@dataclass
class Prepared:
    """One ready-to-run kernel invocation and what it must produce."""

    record: Callable[[Recorder], None]  # records the kernel's dispatches (may be called many times)
    read: Callable[[], np.ndarray]  # reads the output back after a submit
    reference: np.ndarray  # float64 expected output, same shape as read()
    scale: float | np.ndarray  # errors are measured relative to this (a number, or one per output)
    tol: float  # pass iff |got - reference| <= tol * scale everywhere
    nbytes: int  # bytes one run reads and writes (for GB/s)


@dataclass(frozen=True)
class KernelCase:
    """A named kernel run: `prepare` builds inputs and the reference, the harness runs and checks."""

    kernel: str
    fmt: str
    shape: str
    prepare: Callable[[GPUContext, np.random.Generator], Prepared]
    variant: str = "default"
    quick: bool = True  # part of the quick suite (pytest); long cases only run from the CLI
    requires: tuple[str, ...] = ()  # device features: "subgroups", "f16"
    backend: str = "wgpu"  # one of BACKENDS; a cpu case's prepare() gets a CpuKernelContext

    @property
    def name(self) -> str:
        return f"{self.kernel}[{self.fmt},{self.shape},{self.variant}]"

    def supported(self, ctx: GPUContext) -> bool:
        """Whether the device has every feature this case needs."""
        have = {"subgroups": ctx.has_subgroups, "f16": ctx.has_f16}
        return all(have.get(feature, False) for feature in self.requires)


@dataclass
class CaseResult:
    """The outcome of one case; `--json` prints these as dicts."""

    kernel: str
    fmt: str
    shape: str
    variant: str
    passed: bool
    max_abs_err: float | None = None
    max_rel_err: float | None = None  # max of |got - reference| / scale
    tol: float | None = None
    gbps: float | None = None
    seconds: float | None = None  # one timed run
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CASES: list[KernelCase] = []
_imported_modules = False


def register_case(kernel: str, fmt: str, shape: str,
                  prepare: Callable[[Any, np.random.Generator], Prepared],
                  variant: str = "default", quick: bool = True, requires: Sequence[str] = (),
                  backend: str = "wgpu") -> KernelCase:
    """Add a case to the registry (call at import time of a module listed in CASE_MODULES).

    `quick=False` keeps a slow case out of the pytest suite; `requires` names device features
    ("subgroups", "f16") without which the case does not apply; `backend` says whose kernels it runs.
    """
    assert backend in BACKENDS, backend
    case = KernelCase(kernel, fmt, shape, prepare, variant, quick, tuple(requires), backend)
    _CASES.append(case)
    return case


def all_cases() -> list[KernelCase]:
    """Every registered case, after importing CASE_MODULES once."""
    global _imported_modules
    if not _imported_modules:
        _imported_modules = True
        for module in CASE_MODULES:
            importlib.import_module(module)
    return list(_CASES)


def select_cases(formats: Sequence[str] = (), kernel_names: Sequence[str] = (), quick: bool = False,
                 ctx: Any = None, backend: str = "wgpu") -> list[KernelCase]:
    """Cases of `backend` filtered by format and kernel names (case-insensitive; empty means all), by
    the quick suite, and by what `ctx`'s device supports (when given)."""
    fmts = {f.upper() for f in formats}
    names = {k.lower() for k in kernel_names}
    return [c for c in all_cases()
            if c.backend == backend and (not fmts or c.fmt.upper() in fmts) and (not names or c.kernel.lower() in names)
            and (c.quick or not quick) and (ctx is None or c.supported(ctx))]


def run_case(ctx: Any, case: KernelCase, reps: int = 3, seed: int = 0) -> CaseResult:
    """Run one case: check it against its reference, then time `reps` runs in one submit (0: no timing)."""
    result = CaseResult(case.kernel, case.fmt, case.shape, case.variant, passed=False)
    try:
        prep = case.prepare(ctx, np.random.default_rng(seed))
        with ctx.recorder() as rec:
            prep.record(rec)
        got = np.asarray(prep.read(), dtype=np.float64)
        _compare(result, got, prep)
        if reps > 0:
            _time(ctx, result, prep, reps)
    except RealmError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.passed = False
    return result


def run_cases(cases: Iterable[KernelCase], reps: int = 3, ctx: GPUContext | None = None,
              on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Run cases in order on `ctx` (default: the process's GPU context; a CpuKernelContext for cpu
    cases). BackendError if there is no GPU at all."""
    ctx = ctx or GPUContext.get()
    results = []
    for case in cases:
        result = run_case(ctx, case, reps)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _compare(result: CaseResult, got: np.ndarray, prep: Prepared) -> None:
    ref = prep.reference
    if got.shape != ref.shape:
        result.error = f"output shape {got.shape}, expected {ref.shape}"
        return
    finite = np.isfinite(ref)
    if not np.array_equal(np.isfinite(got), finite) or not np.array_equal(got[~finite], ref[~finite]):
        result.error = "non-finite outputs differ from the reference"
        return
    diff = np.where(finite, np.abs(got - ref), 0.0)
    scale = np.broadcast_to(np.asarray(prep.scale, dtype=np.float64), diff.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / scale)  # zero scale demands an exact result
    result.max_abs_err = float(np.max(diff, initial=0.0))
    result.max_rel_err = float(np.max(rel, initial=0.0))
    result.tol = prep.tol
    result.passed = result.max_rel_err <= prep.tol


def _time(ctx: Any, result: CaseResult, prep: Prepared, reps: int) -> None:
    sync = lambda: prep.read()  # noqa: E731  - a read-back waits for every submitted dispatch
    sync()
    start = time.perf_counter()
    with ctx.recorder() as rec:
        for _ in range(reps):
            prep.record(rec)
    sync()
    seconds = (time.perf_counter() - start) / reps
    result.seconds = seconds
    result.gbps = prep.nbytes / seconds / 1e9 if seconds > 0 else None


# =============================================================================================
# Matmul and embedding-gather cases: every weight format against gguf.quants' dequantization
# =============================================================================================

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


def _matmul_prepare(fmt: str, n_rows: int, n_cols: int, n_tokens: int, mode: str = "normal",
                    max_part_bytes: int | None = None, config: kernels.KernelConfig | None = None,
                    ) -> Callable[[GPUContext, np.random.Generator], Prepared]:
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        tensor = random_weight(fmt, n_rows, n_cols, rng, mode)
        w_ref = reference_dequantize(tensor)
        x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
        weight = kernels.upload_weight(ctx, tensor, max_part_bytes)
        x_buf = ctx.upload(x)
        out = ctx.empty(n_tokens * n_rows * 4)
        return Prepared(
            record=lambda rec: kernels.matmul(rec, weight, x_buf, out, n_tokens, config=config),
            read=lambda: ctx.read(out, np.float32, (n_tokens, n_rows)),
            reference=x.astype(np.float64) @ w_ref.T,
            scale=matmul_tolerance_scale(w_ref, x), tol=MATMUL_TOL,
            nbytes=weight.nbytes + x.nbytes + n_tokens * n_rows * 4,
        )
    return prepare


def _gather_prepare(fmt: str, n_rows: int, n_cols: int, ids: Sequence[int], scale: float,
                    max_part_bytes: int | None = None) -> Callable[[GPUContext, np.random.Generator], Prepared]:
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> Prepared:
        tensor = random_weight(fmt, n_rows, n_cols, rng)
        w_ref = reference_dequantize(tensor)
        weight = kernels.upload_weight(ctx, tensor, max_part_bytes)
        ids_buf = ctx.upload(np.asarray(ids, np.uint32))
        out = ctx.empty(len(ids) * n_cols * 4)
        return Prepared(
            record=lambda rec: kernels.gather_rows(rec, weight, ids_buf, out, len(ids), scale=scale),
            read=lambda: ctx.read(out, np.float32, (len(ids), n_cols)),
            reference=scale * w_ref[list(ids)],
            scale=abs(scale) * np.max(np.abs(w_ref[list(ids)]), axis=1, keepdims=True), tol=GATHER_TOL,
            nbytes=len(ids) * (weight.row_bytes + n_cols * 4),
        )
    return prepare


def _min_cols(fmt: str) -> int:
    """The shortest legal row: one block (quantized) or one 16-weight chunk (float formats)."""
    return max(kernels.CHUNK, QUANT_FORMATS[GGMLQuantizationType[fmt]].block_size)


def _register_matmul_cases() -> None:
    for fmt in MATMUL_FORMATS:
        short = _min_cols(fmt)
        k = max(512, short)
        # decode (matrix-vector): rows not a multiple of any workgroup's row count
        register_case("matmul", fmt, f"37x{k} t=1", _matmul_prepare(fmt, 37, k, 1))
        # prefill tiles: a partial tile, a full tile, more tokens than one tile
        register_case("matmul", fmt, f"37x{k} t=3", _matmul_prepare(fmt, 37, k, 3))
        register_case("matmul", fmt, f"37x{k} t=16", _matmul_prepare(fmt, 37, k, 16), quick=False)
        register_case("matmul", fmt, f"21x{k} t=20", _matmul_prepare(fmt, 21, k, 20))
        # short rows (one block) and long rows
        register_case("matmul", fmt, f"100x{short} t=2", _matmul_prepare(fmt, 100, short, 2))
        register_case("matmul", fmt, "19x4096 t=1", _matmul_prepare(fmt, 19, 4096, 1), quick=False)
        for mode in ("zero", "extreme"):
            register_case("matmul", fmt, f"13x{k} t=2", _matmul_prepare(fmt, 13, k, 2, mode), variant=f"{mode} scales")
        # a weight split into several bindings, as the real model's 178 MB token_embd is
        row_bytes = k // QUANT_FORMATS[GGMLQuantizationType[fmt]].block_size \
            * QUANT_FORMATS[GGMLQuantizationType[fmt]].type_size
        register_case("matmul", fmt, f"45x{k} t=2", _matmul_prepare(fmt, 45, k, 2, max_part_bytes=16 * row_bytes + 4),
                      variant="split 16 rows")
        register_case("gather", fmt, f"45x{k} ids=6", _gather_prepare(fmt, 45, k, [0, 44, 17, 16, 17, 31], 0.5,
                                                                         max_part_bytes=16 * row_bytes + 4),
                      variant="split 16 rows")
        # the subgroup-reduction variant (hardware default; tested wherever the adapter has subgroups)
        register_case("matmul", fmt, f"37x{k} t=3", _matmul_prepare(fmt, 37, k, 3, config=kernels.KernelConfig(
            subgroups=True)), variant="subgroups", requires=("subgroups",))
        # bandwidth figure: a 2048 x 2048 matrix-vector product
        register_case("matmul", fmt, "2048x2048 t=1", _matmul_prepare(fmt, 2048, 2048, 1), quick=False)


_register_matmul_cases()
