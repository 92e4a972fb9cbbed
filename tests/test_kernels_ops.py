"""The non-matmul WGSL kernels (norm, rope, attention, element-wise, rounding, LoRA) against float64 NumPy.

The parametrized cases are the kernel harness's cases for these kernels (host_functions/backends/
wgpu_op_cases.py; `realm kernels test -k attention` runs the same ones). The other tests check that
the references themselves are the textbook definitions and that the harness really rejects a
wrong kernel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from host_functions.backends.wgpu import ops
from host_functions.backends.wgpu.context import GPUContext
from host_functions.kernel_tests import harness
from host_functions.kernel_tests import op_reference as ref
from host_functions.kernel_tests.wgpu_op_cases import OP_KERNELS
from realm.cli import main

CTX = GPUContext.get()  # no adapter is an error here, not a skip: CI installs llvmpipe
CASES = harness.select_cases(kernel_names=OP_KERNELS, ctx=CTX)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_kernel_matches_numpy_reference(case: harness.KernelCase) -> None:
    result = harness.run_case(CTX, case, reps=0)
    assert result.error is None, result.error
    assert result.passed, f"max rel err {result.max_rel_err:.3g} > tol {result.tol:.3g}"


def test_cases_cover_decode_prefill_gqa_windows_and_f16_caches() -> None:
    attention = [c.shape for c in CASES if c.kernel == "attention"]
    assert any("t=1 " in s and "pos=0 " not in s for s in attention)  # decode at pos > 0
    assert any("t=1 " not in s and "pos=0 " not in s for s in attention)  # prefill at pos > 0
    assert any("window=0" not in s for s in attention) and any("heads=4/1" in s for s in attention)
    assert {c.fmt for c in CASES if c.kernel == "attention"} == {"F32", "F16"}
    assert {c.variant for c in CASES if c.kernel == "rope"} >= {"interleaved", "neox"}
    assert set(OP_KERNELS) == {c.kernel for c in CASES}


def test_wrong_rope_layout_is_caught_by_the_harness() -> None:
    """A case is only worth something if a wrong kernel fails it: NeoX output vs an interleaved reference."""
    x = np.random.default_rng(0).standard_normal((3, 2, 64)).astype(np.float32)
    x_buf, out = CTX.upload(x), CTX.empty(x.nbytes)

    def prepare(ctx, rng):
        return harness.Prepared(
            record=lambda rec: ops.rope(rec, x_buf, out, 3, 2, 64, 5, 1e4, neox=True),
            read=lambda: ctx.read(out, np.float32, x.shape).astype(np.float64),
            reference=ref.rope(x, 5, 1e4, neox=False), scale=1.0, tol=1e-4, nbytes=0)
    result = harness.run_case(CTX, harness.KernelCase("rope", "F32", "wrong layout", prepare), reps=0)
    assert not result.passed and result.max_rel_err > 1.0


def test_references_are_the_textbook_definitions() -> None:
    # rope by 90 degrees: position 1 with inv_freq 1 (pair 0) turns (1, 0) into (cos 1, sin 1)
    x = np.zeros((1, 1, 4))
    x[0, 0, 0] = 1.0
    np.testing.assert_allclose(ref.rope(x, 1, 1e4, neox=False)[0, 0, :2], [np.cos(1.0), np.sin(1.0)])
    np.testing.assert_allclose(ref.rope(x, 1, 1e4, neox=True)[0, 0, [0, 2]], [np.cos(1.0), np.sin(1.0)])
    # attention over identical keys averages the values it may see (window 2: the last two)
    q, k = np.ones((1, 1, 2)), np.ones((4, 1, 2))
    v = np.arange(8.0).reshape(4, 1, 2)
    np.testing.assert_allclose(ref.attention(q, k, v, 3, 2, 1.0)[0, 0], v[2:, 0].mean(0))
    assert ref.round_to(np.float32([1.0 + 2.0**-8]), "bf16")[0] == 1.0  # a tie rounds to even
    assert ref.round_to(np.float32([1.0 + 3 * 2.0**-8]), "bf16")[0] == 1.0 + 2.0**-6


def test_realm_kernels_test_runs_the_op_cases() -> None:
    result = CliRunner().invoke(main, ["kernels", "test", "-k", "rms_norm", "-k", "round", "--reps", "0", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["kernel"] for r in rows} == {"rms_norm", "round"} and all(r["passed"] for r in rows)
