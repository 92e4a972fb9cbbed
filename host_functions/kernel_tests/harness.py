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
Case tables live in their own modules (`wgpu_matmul_cases`, `wgpu_op_cases`, `cpu_cases`), which call
`register_case` at import; importing the kernel_tests package imports them all. `run_cases()` runs
every selected case and returns `CaseResult`s; it never raises for a failing kernel (the error becomes
the result's `error`), so one broken kernel cannot hide the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from host_functions.backends.wgpu.context import GPUContext, Recorder
from host_functions.errors import RealmError

BACKENDS = ("wgpu", "cpu")  # which kernels a case runs: the WGSL ones, or the native CPU library

class KernelContext(Protocol):
    """What cases run on: the GPU context (wgpu cases) or a loaded native library (cpu cases)."""

    @property
    def has_subgroups(self) -> bool: ...

    @property
    def has_f16(self) -> bool: ...

    def recorder(self) -> AbstractContextManager[Any]: ...


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
    prepare: Callable[[Any, np.random.Generator], Prepared]  # gets the context of its backend
    variant: str = "default"
    quick: bool = True  # part of the quick suite (pytest); long cases only run from the CLI
    requires: tuple[str, ...] = ()  # device features: "subgroups", "f16"
    backend: str = "wgpu"  # one of BACKENDS; a cpu case's prepare() gets a CpuKernelContext

    @property
    def name(self) -> str:
        return f"{self.kernel}[{self.fmt},{self.shape},{self.variant}]"

    def supported(self, ctx: KernelContext) -> bool:
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


def register_case(kernel: str, fmt: str, shape: str,
                  prepare: Callable[[Any, np.random.Generator], Prepared],
                  variant: str = "default", quick: bool = True, requires: Sequence[str] = (),
                  backend: str = "wgpu") -> KernelCase:
    """Add a case to the registry (call at import time of a case module of this package).

    `quick=False` keeps a slow case out of the pytest suite; `requires` names device features
    ("subgroups", "f16") without which the case does not apply; `backend` says whose kernels it runs.
    """
    assert backend in BACKENDS, backend
    case = KernelCase(kernel, fmt, shape, prepare, variant, quick, tuple(requires), backend)
    _CASES.append(case)
    return case


def all_cases() -> list[KernelCase]:
    """Every registered case (the package's case modules register theirs when it is imported)."""
    return list(_CASES)


def select_cases(formats: Sequence[str] = (), kernel_names: Sequence[str] = (), quick: bool = False,
                 ctx: KernelContext | None = None, backend: str = "wgpu") -> list[KernelCase]:
    """Cases of `backend` filtered by format and kernel names (case-insensitive; empty means all), by
    the quick suite, and by what `ctx`'s device supports (when given)."""
    fmts = {f.upper() for f in formats}
    names = {k.lower() for k in kernel_names}
    return [c for c in all_cases()
            if c.backend == backend and (not fmts or c.fmt.upper() in fmts) and (not names or c.kernel.lower() in names)
            and (c.quick or not quick) and (ctx is None or c.supported(ctx))]


def run_case(ctx: KernelContext, case: KernelCase, reps: int = 3, seed: int = 0) -> CaseResult:
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


def run_cases(cases: Iterable[KernelCase], reps: int = 3, ctx: KernelContext | None = None,
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


def _time(ctx: KernelContext, result: CaseResult, prep: Prepared, reps: int) -> None:
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
