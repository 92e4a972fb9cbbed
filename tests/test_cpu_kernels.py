"""The native CPU kernels against their NumPy references, on the CPU's best variant and on plain C.

The parametrized cases are the kernel harness's quick cpu suite (`realm kernels test --backend cpu
--quick` runs the same ones): every weight format, 1..20 activation rows, rows that are not a multiple
of the tile or the thread split, short and long rows, zero and extreme scales, and the activation
encoders byte for byte. Then what the scheduler relies on: every output row is the same bits whatever
the number of rows in the call and the number of threads, and every variant computes the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType

from host_functions import native, settings
from host_functions.backends import numpy_backend
from host_functions.errors import BackendError, RealmError
from host_functions.kernel_tests import harness, inputs, op_reference
from host_functions.kernel_tests.cpu_cases import (
    GATED_TOL,
    MATMUL_TOL,
    NORM_TOL,
    CpuKernelContext,
    decode_activations,
    encode_activations,
    gated_inputs,
    gated_scale,
    matmul_scale,
    reference_matmul,
    rope_inputs,
)
from realm.cli import main

BEST = native.load()
CASES = harness.select_cases(quick=True, backend="cpu")


@pytest.fixture(scope="module")
def portable() -> native.Kernels:
    """The plain C variant, loaded as REALM_CPU_KERNELS=portable makes every load() do."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.CPU_KERNELS, "portable")
        kernels = native.load()
    assert kernels.variant.name == "portable"
    return kernels


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cpu_kernel_case_matches_numpy_reference(case: harness.KernelCase) -> None:
    result = harness.run_case(CpuKernelContext(BEST), case, reps=0)
    assert result.error is None, result.error
    assert result.passed, f"max rel err {result.max_rel_err:.3g} > tol {result.tol:.3g}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_portable_kernel_case_matches_numpy_reference(portable: native.Kernels, case: harness.KernelCase) -> None:
    result = harness.run_case(CpuKernelContext(portable), case, reps=0)
    assert result.passed, result.error or f"max rel err {result.max_rel_err:.3g} > tol {result.tol:.3g}"


def test_quick_suite_covers_every_format_and_activation_type() -> None:
    covered = {(c.kernel, c.fmt) for c in CASES}
    assert {("matmul", fmt) for fmt in inputs.MATMUL_FORMATS} <= covered
    assert {("quantize", act) for act in ("Q8_0", "Q8_1", "Q8_K", "F32", "F16", "BF16")} <= covered


def _weight_and_x(fmt: str, rng: np.random.Generator, n_rows: int = 37, n_tok: int = 16):
    k = 512
    tensor = inputs.random_weight(fmt, n_rows, k, rng)
    return tensor, tensor.raw_bytes().reshape(n_rows, -1), rng.standard_normal((n_tok, k)).astype(np.float32) * 3


@pytest.mark.parametrize("fmt", inputs.MATMUL_FORMATS)
def test_rows_are_identical_whatever_the_batch_and_thread_count(fmt: str) -> None:
    """Batch invariance: row t of a 16-row call equals the 1-row call on row t, bit for bit, with 1,
    2 and 3 threads (fixed reduction order per output)."""
    tensor, blocks, x = _weight_and_x(fmt, np.random.default_rng(1))
    weights = [(int(tensor.qtype), blocks)]
    kernels = native.load()
    try:
        singles = np.concatenate([kernels.matmul(weights, 512, x[t:t + 1]) for t in range(len(x))])
        for threads in (1, 2, 3):
            kernels.set_threads(threads)
            assert np.array_equal(kernels.matmul(weights, 512, x), singles), f"{threads} threads"
            assert np.array_equal(kernels.matmul(weights, 512, x[5:12]), singles[5:12])
    finally:
        kernels.set_threads(native.default_threads())


SUPPORTED = [v for v in native.ARCH_VARIANTS[BEST.variant.target.split("-")[0]].values()
             if v.name != "portable" and v.needs <= native.cpu_flags()]


@pytest.fixture(scope="module", params=[v.name for v in SUPPORTED])
def variant(request: pytest.FixtureRequest) -> native.Kernels:
    """Each vector variant this CPU can run (AVX2, AVX-VNNI, AVX-512 VNNI), loaded as REALM_CPU_KERNELS does."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.CPU_KERNELS, request.param)
        return native.load()


@pytest.mark.parametrize("fmt", inputs.MATMUL_FORMATS)
def test_every_variant_computes_the_same_bits(variant: native.Kernels, portable: native.Kernels, fmt: str) -> None:
    # 1, 5 and 16 tokens: the tiles; 8, 16 (two row counts) and 33: the token panels.
    tensor, blocks, x = _weight_and_x(fmt, np.random.default_rng(2), n_tok=33)
    weights = [(int(tensor.qtype), blocks)]
    for rows in (slice(0, 1), slice(0, 5), slice(0, 8), slice(3, 19), slice(0, 33)):
        assert np.array_equal(variant.matmul(weights, 512, x[rows]), portable.matmul(weights, 512, x[rows])), rows
    assert np.array_equal(variant.quantize_activations(int(tensor.qtype), x),
                          portable.quantize_activations(int(tensor.qtype), x))


# format -> (block bytes, the bytes of its quants, the byte values that make them extreme)
_EXTREME_QUANTS = {"Q8_0": (34, slice(2, 34), [0x80, 0x7F]), "Q8_K": (292, slice(4, 260), [0x80, 0x7F]),
                   "Q6_K": (210, slice(0, 192), [0x00, 0xFF]), "Q5_0": (22, slice(2, 22), [0x00, 0xFF])}


@pytest.mark.parametrize("fmt", list(_EXTREME_QUANTS))
def test_full_range_quants_never_saturate_a_panel(variant: native.Kernels, portable: native.Kernels, fmt: str) -> None:
    """Weights at their format's extreme codes against activations at +-127 (every product at its
    largest): AVX2's vpmaddubsw adds two products in int16, which the panels must never overflow."""
    rng = np.random.default_rng(5)
    tensor, blocks, _ = _weight_and_x(fmt, rng, n_rows=4)
    block, quant_bytes, extremes = _EXTREME_QUANTS[fmt]
    quants = blocks.reshape(4, -1, block)  # a view: the edits land in `blocks`
    quants[:, :, quant_bytes] = rng.choice(extremes, quants[:, :, quant_bytes].shape).astype(np.uint8)
    x = np.where(rng.random((16, 512)) < 0.5, -1.0, 1.0).astype(np.float32)  # quantizes to +-127
    weights = [(int(tensor.qtype), blocks)]
    assert np.array_equal(variant.matmul(weights, 512, x), portable.matmul(weights, 512, x))


def test_fused_call_equals_separate_calls_over_mixed_formats() -> None:
    """Q|K|V with V in another format (as the default model stores it): one call, same bits."""
    rng = np.random.default_rng(3)
    parts = [inputs.random_weight(fmt, rows, 640, rng) for fmt, rows in (("Q5_0", 40), ("Q5_0", 9), ("Q8_0", 9))]
    weights = [(int(t.qtype), t.raw_bytes().reshape(t.shape[0], -1)) for t in parts]
    x = rng.standard_normal((3, 640)).astype(np.float32)
    separate = np.concatenate([BEST.matmul([w], 640, x) for w in weights], axis=1)
    assert np.array_equal(BEST.matmul(weights, 640, x), separate)


def test_one_wrong_quant_fails_the_tolerance() -> None:
    """The check can fail: two wrong quants per Q4_K super-block of one row move its outputs far beyond
    MATMUL_TOL."""
    rng = np.random.default_rng(4)
    tensor, blocks, x = _weight_and_x("Q4_K", rng, n_rows=8, n_tok=2)
    w_ref = inputs.reference_dequantize(tensor)
    got = BEST.matmul([(int(tensor.qtype), blocks)], 512, x)
    ref = reference_matmul("Q4_K", w_ref, blocks, x)
    scale = matmul_scale("Q4_K", blocks, w_ref, decode_activations("Q4_K", encode_activations("Q4_K", x), 512))
    assert np.all(np.abs(got - ref) <= MATMUL_TOL * scale)
    broken = blocks.copy()
    broken[3, 20::144] ^= 0x88  # row 3: in each super-block, one byte of quants (two weights, off by 8)
    got = BEST.matmul([(int(tensor.qtype), broken)], 512, x)
    assert np.any(np.abs(got - ref)[:, 3] > 10 * MATMUL_TOL * scale[:, 3])


def test_bad_calls_are_errors_not_crashes() -> None:
    rows = np.zeros((4, 34), np.uint8)
    with pytest.raises(BackendError, match="do not fit"):
        BEST.matmul([(int(GGMLQuantizationType.Q8_0), rows)], 64, np.zeros((1, 32), np.float32))
    with pytest.raises(BackendError, match="refused"):  # 34-byte rows are too short for 64 Q8_0 weights
        BEST.matmul([(int(GGMLQuantizationType.Q8_0), rows)], 64, np.zeros((1, 64), np.float32))
    with pytest.raises(BackendError, match="refused"):  # IQ2_XXS: not in the quant table
        BEST.matmul([(16, rows)], 32, np.zeros((1, 32), np.float32))


def test_variant_selection_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CPU_KERNELS, "portable")
    assert native.select_variant().name == "portable"
    monkeypatch.setenv(settings.CPU_KERNELS, "sse9")
    with pytest.raises(BackendError, match="choose from"):
        native.select_variant()
    monkeypatch.delenv(settings.CPU_KERNELS)
    flags = native.cpu_flags()
    best = native.select_variant()
    assert best.needs <= flags and "amx" not in best.mcpu  # AMX traps here: never compiled in


# /proc/cpuinfo as Linux writes it on an Ampere Altra (Neoverse N1, armv8.2 with dotprod) and on a
# Raspberry Pi 4 (Cortex-A72, armv8.0): one block per core, the flags on the `Features` line.
_CPUINFO_N1 = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU part\t: 0xd0c

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
"""
_CPUINFO_A72 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08
"""
_CPUINFO_X86_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2
"""


@pytest.mark.parametrize("machine, cpuinfo, want", [
    ("aarch64", _CPUINFO_N1, "dotprod"), ("arm64", _CPUINFO_N1, "dotprod"), ("aarch64", _CPUINFO_A72, "neon"),
    ("aarch64", "", "portable"), ("x86_64", _CPUINFO_X86_AVX2, "avx2"), ("AMD64", "flags : sse sse2", "portable")])
def test_variant_choice_follows_the_cpuinfo_flags(machine: str, cpuinfo: str, want: str) -> None:
    variant = native.choose_variant(machine, native.parse_cpu_flags(cpuinfo))
    assert variant.name == want
    assert variant.target.startswith("aarch64" if machine.lower() in ("aarch64", "arm64") else "x86_64")


def test_arm_variants_build_plain_c_neon_and_dotprod() -> None:
    arm = native.ARCH_VARIANTS["aarch64"]
    assert list(arm) == ["dotprod", "neon", "portable"]  # fastest first
    assert arm["portable"].defines == ("-DREALM_PLAIN_C",) and not arm["neon"].defines
    assert "dotprod" in arm["dotprod"].mcpu and arm["dotprod"].needs == {"asimd", "asimddp"}


def test_forced_variant_is_checked_against_the_cpuinfo_flags() -> None:
    a72 = native.parse_cpu_flags(_CPUINFO_A72)
    assert native.choose_variant("aarch64", a72, " NEON ").name == "neon"
    assert native.choose_variant("aarch64", a72, "portable").name == "portable"
    with pytest.raises(BackendError, match="this CPU lacks asimddp"):
        native.choose_variant("aarch64", a72, "dotprod")
    with pytest.raises(BackendError, match="choose from dotprod, neon, portable"):
        native.choose_variant("aarch64", a72, "avx2")
    with pytest.raises(BackendError, match="not riscv64"):
        native.choose_variant("riscv64", frozenset())


def test_threads_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.THREADS, "two")
    with pytest.raises(RealmError, match="positive integer"):
        native.default_threads()
    monkeypatch.setenv(settings.THREADS, "3")
    assert native.default_threads() == 3


def test_library_is_cached_by_source_hash() -> None:
    path = native.library_path(BEST.variant)
    assert path == BEST.path and path.exists() and BEST.variant.name in path.name


def test_cli_runs_the_cpu_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CPU_KERNELS, "portable")
    result = CliRunner().invoke(main, ["kernels", "test", "--backend", "cpu", "--format", "Q6_K", "--quick",
                                       "--reps", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert '"passed": true' in result.output and '"passed": false' not in result.output


@pytest.mark.parametrize("fmt", ["Q5_0", "Q8_0", "Q4_1", "Q4_K", "Q6_K", "Q2_K"])
def test_long_batches_cross_every_panel_boundary_with_the_same_bits(fmt: str) -> None:
    """150 rows: the token-panel path's several passes (8 panels of 16 per pass) and a partial last
    panel give each row the bits of the one-row tile path."""
    tensor, blocks, x = _weight_and_x(fmt, np.random.default_rng(5), n_rows=21, n_tok=150)
    weights = [(int(tensor.qtype), blocks)]
    singles = np.concatenate([BEST.matmul(weights, 512, x[t:t + 1]) for t in range(len(x))])
    assert np.array_equal(BEST.matmul(weights, 512, x), singles)
    assert np.array_equal(BEST.matmul(weights, 512, x[3:12]), singles[3:12])  # 9 rows: one partial panel


def _attention_inputs(rng: np.random.Generator, n: int, n_head: int, n_kv: int, hd: int, pos: int):
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    k = (rng.standard_normal((pos + n, n_kv, hd)) * 2).astype(np.float16).astype(np.float32)  # an f16 cache
    v = rng.standard_normal((pos + n, n_kv, hd)).astype(np.float16).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("n, n_head, n_kv, hd, pos, window", [
    (1, 4, 1, 256, 300, 0), (20, 4, 1, 256, 0, 0), (9, 8, 2, 64, 70, 16), (3, 2, 2, 40, 5, 0), (5, 6, 3, 24, 0, 2)])
def test_attention_matches_the_float64_reference(n: int, n_head: int, n_kv: int, hd: int, pos: int,
                                                 window: int) -> None:
    from host_functions.kernel_tests import op_reference

    q, k, v = _attention_inputs(np.random.default_rng(6), n, n_head, n_kv, hd, pos)
    got = BEST.attention(q, k, v, pos, 0, window, hd ** -0.5)
    want = op_reference.attention(q, k, v, pos, window, hd ** -0.5, round_f16=True)
    # the f16 rounding of the probabilities can flip by one ulp against float64 sums (2^-11 of a
    # probability), which is what the bound allows
    assert np.abs(got - want).max() <= 2e-3 * np.abs(v).max()


def test_attention_is_the_same_bits_whatever_the_chunking_threads_and_variant(portable: native.Kernels) -> None:
    """A query's output depends on its position and the keys it sees only: computed with 19 others,
    alone, on 1 or 3 threads or in plain C, the same bits (speculation and batching rely on it)."""
    q, k, v = _attention_inputs(np.random.default_rng(7), 20, 4, 2, 72, 30)
    kernels = native.load()
    try:
        together = kernels.attention(q, k, v, 30, 0, 0, 0.1)
        for i in (0, 7, 19):
            assert np.array_equal(kernels.attention(q[i:i + 1], k[:31 + i], v[:31 + i], 30 + i, 0, 0, 0.1),
                                  together[i:i + 1])
        for threads in (1, 3):
            kernels.set_threads(threads)
            assert np.array_equal(kernels.attention(q, k, v, 30, 0, 0, 0.1), together)
    finally:
        kernels.set_threads(native.default_threads())
    assert np.array_equal(portable.attention(q, k, v, 30, 0, 0, 0.1), together)
    windowed = kernels.attention(q, k, v, 30, 0, 8, 0.1)  # keys from start=20 on are all a window of 8 needs
    assert np.array_equal(kernels.attention(q, k[20:], v[20:], 30, 20, 8, 0.1), windowed)


def test_attention_of_one_query_splits_its_heads_over_the_threads_with_the_same_bits() -> None:
    """A decode step of a model with one KV head (the default model: 4 query heads on 1) is a single
    (query, KV head) item, so its query heads are split over the threads: every split, the same bits."""
    q, k, v = _attention_inputs(np.random.default_rng(14), 1, 6, 1, 80, 50)
    kernels = native.load()
    try:
        kernels.set_threads(1)
        alone = kernels.attention(q, k, v, 50, 0, 0, 0.1)
        for threads in (2, 3, 4, 7):  # parts of 3, 2, 2 and 1 heads
            kernels.set_threads(threads)
            assert np.array_equal(kernels.attention(q, k, v, 50, 0, 0, 0.1), alone), f"{threads} threads"
    finally:
        kernels.set_threads(native.default_threads())


def test_attention_reads_the_pool_through_the_slots_as_a_gathered_copy() -> None:
    """The backend passes its KV pool and each position's slot (paged blocks, in any order): the same
    bits as the gathered keys, and a slot outside the pool is refused, not read."""
    rng = np.random.default_rng(13)
    q, k, v = _attention_inputs(rng, 3, 4, 2, 40, 25)
    slots = rng.permutation(64)[:28]  # positions 0..27 scattered over a 64-slot pool
    k_pool, v_pool = np.zeros((64, 2, 40), np.float32), np.zeros((64, 2, 40), np.float32)
    k_pool[slots], v_pool[slots] = k, v
    for window, start in ((0, 0), (6, 20)):
        gathered = BEST.attention(q, k[start:], v[start:], 25, start, window, 0.2)
        assert np.array_equal(BEST.attention(q, k_pool, v_pool, 25, start, window, 0.2, slots[start:]), gathered)
    bad = slots.copy()
    bad[5] = 64
    with pytest.raises(BackendError, match="refused"):
        BEST.attention(q, k_pool, v_pool, 25, 0, 0, 0.2, bad)
    with pytest.raises(BackendError, match="do not fit"):
        BEST.attention(q, k_pool, v_pool, 25, 0, 0, 0.2, slots[1:])


def test_kv_store_rounds_as_numpy_and_refuses_slots_outside_the_pool(portable: native.Kernels) -> None:
    """The cpu backend's KV writes give NumpyBackend.store_kv's bits (f16 round to nearest even, with
    ties, subnormals and overflow to inf), on every variant; a bad slot writes nothing."""
    rng = np.random.default_rng(15)
    k = rng.standard_normal((5, 2, 24)).astype(np.float32) * 100
    k[0, 0, :4] = [70000.0, -1e-6, 1e-7, 2049.0]  # inf in f16, two subnormals, a tie (2048 + 1 -> 2048)
    v = rng.standard_normal((5, 2, 24)).astype(np.float32)
    slots = np.array([7, 2, 9, 0, 4])
    want_k, want_v = np.zeros((10, 2, 24), np.float32), np.zeros((10, 2, 24), np.float32)
    with np.errstate(over="ignore"):  # 70000 overflows to inf on purpose
        numpy_backend.NumpyBackend.store_kv(None, want_k, want_v, slots, k, v)  # type: ignore[arg-type]
    for kernels in (BEST, portable):
        k_pool, v_pool = np.zeros_like(want_k), np.zeros_like(want_v)
        kernels.store_kv(k_pool, v_pool, slots, k, v)
        assert np.array_equal(k_pool, want_k) and np.array_equal(v_pool, want_v)
    k_pool = np.zeros_like(want_k)
    with pytest.raises(BackendError, match="outside the pool"):
        BEST.store_kv(k_pool, np.zeros_like(want_v), np.array([7, 2, 10, 0, 4]), k, v)
    assert not k_pool.any()
    with pytest.raises(BackendError, match="do not fit"):
        BEST.store_kv(k_pool, np.zeros_like(want_v), slots[:4], k, v)


def test_attention_refuses_keys_that_do_not_fit() -> None:
    q, k, v = _attention_inputs(np.random.default_rng(8), 2, 4, 1, 16, 3)
    with pytest.raises(BackendError, match="do not fit"):
        BEST.attention(q, k[:-1], v[:-1], 3, 0, 0, 0.25)
    with pytest.raises(BackendError, match="refused"):  # 4 query heads cannot share 3 KV heads
        BEST.attention(q, np.zeros((5, 3, 16), np.float32), np.zeros((5, 3, 16), np.float32), 3, 0, 0, 0.25)


# ---- the row-wise ops (norm.c, activation.c, rope.c) ------------------------------------------------

def _row_ops(rng: np.random.Generator) -> dict[str, tuple]:
    """Each op as (function of a kernel library and a row count, input rows): 17 rows of widths that are
    no multiple of a vector width, and enough work that 2 threads split them (pool_run_rows)."""
    x = rng.standard_normal((17, 2049)).astype(np.float32) * 3
    w = rng.standard_normal(2049).astype(np.float32)
    gate_up = gated_inputs(rng, 17, 2049, "extreme")
    heads, cos, sin = rope_inputs(rng, 17, 8, 258, 40, 1e4)
    return {
        "rms_norm": lambda k, rows: k.rms_norm(x[rows], w, 1e-6),
        "silu": lambda k, rows: k.gated(gate_up[rows], "silu"),
        "gelu": lambda k, rows: k.gated(gate_up[rows], "gelu"),
        "rope neox": lambda k, rows: k.rope(heads[rows], cos[rows], sin[rows], "neox"),
        "rope interleaved": lambda k, rows: k.rope(heads[rows], cos[rows], sin[rows], "interleaved"),
    }


@pytest.mark.parametrize("op", ["rms_norm", "silu", "gelu", "rope neox", "rope interleaved"])
def test_row_ops_are_the_same_bits_whatever_the_rows_threads_and_variant(portable: native.Kernels, op: str) -> None:
    """Batch invariance of the ops the cpu backend runs between its products: a row's result is the
    same bits in a call of 1..17 rows, alone, on 1 or 2 threads, and in plain C."""
    run = _row_ops(np.random.default_rng(9))[op]
    kernels = native.load()
    try:
        kernels.set_threads(1)
        together = run(kernels, slice(0, 17))
        for threads in (1, 2):
            kernels.set_threads(threads)
            assert np.array_equal(run(kernels, slice(0, 17)), together), f"{threads} threads"
            for n in range(1, 17):
                assert np.array_equal(run(kernels, slice(0, n)), together[:n]), f"{n} rows, {threads} threads"
            for r in (0, 8, 16):
                assert np.array_equal(run(kernels, slice(r, r + 1)), together[r:r + 1]), f"row {r} alone"
    finally:
        kernels.set_threads(native.default_threads())
    assert np.array_equal(run(portable, slice(0, 17)), together), "portable variant"


def test_rms_norm_is_the_numpy_backends_within_a_few_ulp() -> None:
    """NumPy sums the float32 squares pairwise in float32, the kernel in double (as llama.cpp): the
    means differ by NumPy's rounding, about an ulp, so 2 NORM_TOL (4 eps) of each value."""
    rng = np.random.default_rng(10)
    for rows, cols in ((1, 640), (7, 643), (16, 256), (2, 5)):
        x = rng.standard_normal((rows, cols)).astype(np.float32) * 5
        w = rng.standard_normal(cols).astype(np.float32)
        want = numpy_backend.rms_norm(x, w, 1e-6)
        assert np.all(np.abs(BEST.rms_norm(x, w, 1e-6) - want) <= 2 * NORM_TOL * np.abs(want))
    q = rng.standard_normal((3, 4, 256)).astype(np.float32)  # q/k norms: every head a row of head_dim
    w = rng.standard_normal(256).astype(np.float32)
    assert BEST.rms_norm(q, w, 1e-6).shape == q.shape
    want = numpy_backend.rms_norm(q, w, 1e-6)
    assert np.all(np.abs(BEST.rms_norm(q, w, 1e-6) - want) <= 2 * NORM_TOL * np.abs(want))


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_activation_is_the_numpy_backends_within_its_rounding(activation: str) -> None:
    """Against NumpyBackend.ffn_activation's NumPy functions: the float64 bound (gated_scale) plus
    NumPy's own error, which for GELU is 1 + tanh u's cancellation, eps |x up| (0 for SiLU: ~1 ulp)."""
    gate_up = gated_inputs(np.random.default_rng(11), 9, 1003)
    gate, up = gate_up[:, :1003], gate_up[:, 1003:]
    want = (numpy_backend.gelu_tanh if activation == "gelu" else numpy_backend.silu)(gate) * up
    ref = op_reference.gated(gate, up, activation)
    scale = gated_scale(gate_up, activation, ref) + np.abs(ref) + (np.abs(gate * up) if activation == "gelu" else 0)
    assert np.all(np.abs(BEST.gated(gate_up, activation) - want) <= GATED_TOL * scale)


@pytest.mark.parametrize("layout", ["neox", "interleaved"])
def test_rope_is_the_float64_rotation(layout: str) -> None:
    """Bit for bit NumpyBackend's rope (the harness cases), and so within float32 rounding of the
    float64 definition: 2 eps of the head's largest value (cos/sin rounded to float32, two products
    and a sum)."""
    x, cos, sin = rope_inputs(np.random.default_rng(12), 6, 3, 128, 2000, 1e6)
    want = op_reference.rope(x, 2000, 1e6, neox=layout == "neox")
    got = BEST.rope(x, cos, sin, layout)
    assert np.all(np.abs(got - want) <= 2 * inputs.F32_EPS * np.abs(x).max(axis=-1, keepdims=True))
    wrong = BEST.rope(x, cos, sin, "interleaved" if layout == "neox" else "neox")
    assert np.abs(wrong - want).max() > 0.1  # the check tells the layouts apart


def test_row_ops_refuse_shapes_that_do_not_fit() -> None:
    with pytest.raises(BackendError, match="does not fit"):
        BEST.rms_norm(np.zeros((2, 8), np.float32), np.zeros(7, np.float32), 1e-6)
    with pytest.raises(BackendError, match="silu or gelu"):
        BEST.gated(np.zeros((2, 8), np.float32), "relu")
    with pytest.raises(BackendError, match="silu or gelu"):
        BEST.gated(np.zeros((2, 7), np.float32), "silu")
    with pytest.raises(BackendError, match="do not fit"):
        BEST.rope(np.zeros((2, 1, 8), np.float32), np.zeros((2, 1, 3), np.float32), np.zeros((2, 1, 3), np.float32),
                  "neox")
    with pytest.raises(BackendError, match="layout"):
        BEST.rope(np.zeros((2, 1, 8), np.float32), np.zeros((2, 1, 4), np.float32), np.zeros((2, 1, 4), np.float32),
                  "llama")
    with pytest.raises(BackendError, match="does not fit"):
        BEST.rms_norm(np.zeros((2, 0), np.float32), np.zeros(0, np.float32), 1e-6)
