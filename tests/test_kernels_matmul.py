"""Fused dequant+matmul and embedding-gather WGSL kernels against float64 NumPy references.

The parametrized cases are the kernel harness's quick suite (`realm kernels test --quick` runs the
same ones): every weight format, decode and prefill token counts, rows that are not a multiple of
the workgroup, short and long rows, zero and extreme scales, weights split over several bindings,
the subgroup variant. References dequantize with gguf.quants, the outside oracle. The remaining
tests use llama.cpp-quantized tensors from the tiny models and check the harness and the errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType

from host_functions.backends.wgpu import weight_kernels as kernels
from host_functions.backends.wgpu.context import GPUContext
from host_functions.errors import BackendError, ModelFormatError, UnsupportedError
from host_functions.formats.gguf_file import GGUFFile, RawTensor
from host_functions.kernel_tests import harness, inputs, wgpu_matmul_cases
from realm.cli import main

DATA = Path(__file__).parent / "data"
CTX = GPUContext.get()  # no adapter is an error here, not a skip: CI installs llvmpipe
# Only this file's kernels: the op kernels' cases run in test_kernels_ops.py.
QUICK_CASES = harness.select_cases(kernel_names=("matmul", "gather"), quick=True, ctx=CTX)
TINY_LLAMA_FORMATS = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                      "Q5_K", "Q6_K"]


def assert_matmul_close(got: np.ndarray, w_ref: np.ndarray, x: np.ndarray) -> None:
    """got == x @ w_ref.T within the harness's matmul tolerance, output by output."""
    err = np.abs(got - x.astype(np.float64) @ w_ref.T)
    assert np.all(err <= inputs.MATMUL_TOL * inputs.matmul_tolerance_scale(w_ref, x)), float(err.max())


@pytest.mark.parametrize("case", QUICK_CASES, ids=[c.name for c in QUICK_CASES])
def test_kernel_case_matches_numpy_reference(case: harness.KernelCase) -> None:
    result = harness.run_case(CTX, case, reps=0)
    assert result.error is None, result.error
    assert result.passed, f"max rel err {result.max_rel_err:.3g} > tol {result.tol:.3g}"


def test_quick_suite_covers_every_format_with_decode_prefill_split_and_gather() -> None:
    covered = {(c.kernel, c.fmt) for c in QUICK_CASES}
    for fmt in inputs.MATMUL_FORMATS:
        assert {("matmul", fmt), ("gather", fmt)} <= covered
        shapes = [c.shape for c in QUICK_CASES if c.fmt == fmt and c.kernel == "matmul"]
        assert any(s.endswith("t=1") for s in shapes) and any(s.endswith("t=20") for s in shapes)
    assert CTX.has_subgroups == any(c.variant == "subgroups" for c in QUICK_CASES)


@pytest.mark.parametrize("fmt", TINY_LLAMA_FORMATS)
def test_llama_cpp_quantized_weights_match_gguf_dequantization(fmt: str) -> None:
    gguf = GGUFFile(DATA / f"tiny-llama-{fmt}.gguf")
    down = gguf.tensor("blk.0.ffn_down.weight")  # (256, 512): rows of 512 weights
    emb = gguf.tensor("token_embd.weight")  # (320, 256)
    assert down.qtype == GGMLQuantizationType[fmt]
    x = np.random.default_rng(1).standard_normal((3, down.shape[1])).astype(np.float32)
    w_ref = inputs.reference_dequantize(down)
    got = kernels.matmul_numpy(CTX, kernels.upload_weight(CTX, down), x)
    assert_matmul_close(got, w_ref, x)
    ids = [1, 319, 7, 7, 0]
    rows = kernels.gather_numpy(CTX, kernels.upload_weight(CTX, emb), ids, scale=16.0)
    np.testing.assert_allclose(rows, 16.0 * inputs.reference_dequantize(emb)[ids], rtol=1e-6, atol=0)


def test_harness_fails_a_kernel_that_reads_one_wrong_byte() -> None:
    """The tolerance discriminates: one quant off by one in 37x512 weights (GPU copy only) fails."""
    def prepare(ctx: GPUContext, rng: np.random.Generator) -> harness.Prepared:
        tensor = inputs.random_weight("Q4_K", 37, 512, rng)
        w_ref = inputs.reference_dequantize(tensor)
        x = rng.standard_normal((1, 512)).astype(np.float32)
        raw = tensor.raw_bytes().copy()
        raw[5 * 288 + 16 + 40] ^= 0x10  # row 5, first block, one high nibble of qs
        weight = kernels.upload_weight(ctx, RawTensor("bad", tensor.qtype, tensor.shape, raw.reshape(37, -1)))
        x_buf, out = ctx.upload(x), ctx.empty(37 * 4)
        return harness.Prepared(lambda rec: kernels.matmul(rec, weight, x_buf, out, 1),
                                lambda: ctx.read(out, np.float32, (1, 37)), x.astype(np.float64) @ w_ref.T,
                                inputs.matmul_tolerance_scale(w_ref, x), inputs.MATMUL_TOL, 0)

    result = harness.run_case(CTX, harness.KernelCase("matmul", "Q4_K", "37x512 t=1", prepare), reps=0)
    assert not result.passed and result.error is None
    assert result.max_rel_err > 10 * inputs.MATMUL_TOL


# Every kernel layout the host can pick (kernels.default_config picks per adapter): the CPU default,
# the GPU fallback with a workgroup-memory tree sum, an odd register tile, and subgroup sums.
LAYOUTS = {
    "cpu": kernels.KernelConfig(wg=64, tpr=1, rows=4, tile_t=4),
    "cpu 8x8": kernels.KernelConfig(wg=32, tpr=1, rows=8, tile_t=8),
    "tree sum": kernels.KernelConfig(wg=64, tpr=16, rows=2),
    "tree sum 3x2": kernels.KernelConfig(wg=32, tpr=4, rows=3, tile_t=2),
    "subgroups": kernels.KernelConfig(wg=64, rows=2, subgroups=True),
    "subgroups 1x8": kernels.KernelConfig(wg=32, rows=1, subgroups=True),
}
# The reduction layout does not depend on the format (formats only supply dequant16), so each
# layout runs with one format, rotating through block sizes 256, 32 and 16; the harness's quick
# cases run every format in the default layout. Each distinct tile is a pipeline to compile.
LAYOUT_FORMATS = ["Q4_K", "Q5_0", "F16", "Q6_K", "Q8_0", "BF16"]
LAYOUT_CASES = [(layout, LAYOUT_FORMATS[i % len(LAYOUT_FORMATS)], n_tokens)
                for i, layout in enumerate(LAYOUTS) for n_tokens in (1, 11)]


@pytest.mark.parametrize(("layout", "fmt", "n_tokens"), LAYOUT_CASES)
def test_every_kernel_layout_matches_numpy_reference(layout: str, fmt: str, n_tokens: int) -> None:
    """Rows (29) and tokens that are not multiples of any register tile, for every layout."""
    config = LAYOUTS[layout]
    if config.subgroups and not CTX.has_subgroups:
        pytest.fail("the CI adapter (llvmpipe) has subgroups; this device lacks them")
    rng = np.random.default_rng(8)
    tensor = inputs.random_weight(fmt, 29, 768, rng)
    x = rng.standard_normal((n_tokens, 768)).astype(np.float32)
    got = kernels.matmul_numpy(CTX, kernels.upload_weight(CTX, tensor), x, config=config)
    assert_matmul_close(got, inputs.reference_dequantize(tensor), x)


@pytest.mark.parametrize("config", [kernels.KernelConfig(wg=4, tpr=2, rows=1), LAYOUTS["subgroups 1x8"]],
                         ids=["tree sum", "subgroups"])
def test_matvec_over_more_than_65535_workgroups_covers_every_row(config: kernels.KernelConfig) -> None:
    n_rows = 65535 * config.rows_per_group + 9  # the grid needs a second dimension
    tensor = inputs.random_weight("Q8_0", n_rows, 32, np.random.default_rng(2))
    x = np.random.default_rng(3).standard_normal((1, 32)).astype(np.float32)
    w_ref = inputs.reference_dequantize(tensor)
    got = kernels.matmul_numpy(CTX, kernels.upload_weight(CTX, tensor), x, config=config)
    assert_matmul_close(got, w_ref, x)


def test_weights_larger_than_a_binding_are_split_by_rows() -> None:
    tensor = inputs.random_weight("Q4_0", 45, 64, np.random.default_rng(4))  # 36 bytes per row
    weight = kernels.upload_weight(CTX, tensor, max_part_bytes=10 * 36 + 4)
    assert [(p.row_start, p.n_rows) for p in weight.parts] == [(0, 10), (10, 10), (20, 10), (30, 10), (40, 5)]
    with pytest.raises(BackendError, match="exceeds the GPU's binding limit"):
        kernels.upload_weight(CTX, tensor, max_part_bytes=36)


def test_matmul_writes_into_a_column_range_of_a_wider_output() -> None:
    """Q, K and V projections can share one output buffer: rows land at out_col.. with out_stride."""
    tensor = inputs.random_weight("Q5_K", 24, 256, np.random.default_rng(5))
    w_ref = inputs.reference_dequantize(tensor)
    x = np.random.default_rng(6).standard_normal((2, 256)).astype(np.float32)
    out = CTX.upload(np.full((2, 40), 7.0, np.float32))
    with CTX.recorder() as rec:
        kernels.matmul(rec, kernels.upload_weight(CTX, tensor), CTX.upload(x), out, 2, out_stride=40, out_col=10)
    got = CTX.read(out, np.float32, (2, 40))
    assert np.all(got[:, :10] == 7.0) and np.all(got[:, 34:] == 7.0)
    assert_matmul_close(got[:, 10:34], w_ref, x)


def test_matmul_over_a_range_of_rows_leaves_the_others_and_gives_each_row_its_full_batch_bits() -> None:
    """A step's merged LoRA rows are one dispatch over their row range (first=): the same bits as the
    whole batch for those rows, the rows outside the range untouched."""
    tensor = inputs.random_weight("Q4_K", 24, 256, np.random.default_rng(7))
    weight = kernels.upload_weight(CTX, tensor)
    x = CTX.upload(np.random.default_rng(8).standard_normal((7, 256)).astype(np.float32))
    whole, ranged = CTX.empty(7 * 24 * 4), CTX.upload(np.full((7, 24), 7.0, np.float32))
    with CTX.recorder() as rec:
        kernels.matmul(rec, weight, x, whole, 7)
        kernels.matmul(rec, weight, x, ranged, 3, first=3)
    whole_rows, got = CTX.read(whole, np.float32, (7, 24)), CTX.read(ranged, np.float32, (7, 24))
    assert np.array_equal(got[3:6], whole_rows[3:6])
    assert np.all(got[:3] == 7.0) and np.all(got[6:] == 7.0)
    with pytest.raises(BackendError, match="x buffer holds"):
        with CTX.recorder() as rec:
            kernels.matmul(rec, weight, x, ranged, 3, first=5)


def test_unsupported_and_malformed_weights_raise_clear_errors() -> None:
    floats = np.zeros((4, 24), np.float32)
    with pytest.raises(UnsupportedError, match="multiple of 16"):
        kernels.upload_weight(CTX, RawTensor("w", GGMLQuantizationType.F32, (4, 24), floats))
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        kernels.upload_weight(CTX, RawTensor("w", GGMLQuantizationType.IQ2_XXS, (1, 256), np.zeros(66, np.uint8)))
    with pytest.raises(ModelFormatError, match="bytes stored"):
        kernels.upload_weight(CTX, RawTensor("w", GGMLQuantizationType.Q4_0, (2, 32), np.zeros(35, np.uint8)))
    with pytest.raises(UnsupportedError, match="3-D"):
        kernels.upload_weight(CTX, RawTensor("w", GGMLQuantizationType.F32, (2, 2, 16), np.zeros(64, np.float32)))


def test_gather_rejects_token_ids_outside_the_table() -> None:
    weight = kernels.upload_weight(CTX, inputs.random_weight("Q8_0", 10, 32, np.random.default_rng(7)))
    with pytest.raises(BackendError, match="token id out of range"):
        kernels.gather_numpy(CTX, weight, [3, 10])


def test_cli_kernels_test_prints_json_results_and_exits_zero() -> None:
    result = CliRunner().invoke(main, ["kernels", "test", "--format", "q8_0", "--kernel", "gather", "--json",
                                       "--reps", "1"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and all(r["kernel"] == "gather" and r["fmt"] == "Q8_0" and r["passed"] for r in rows)
    assert all(r["gbps"] is not None and r["gbps"] > 0 for r in rows)


def test_cli_kernels_test_exits_one_when_a_case_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_reference(ctx: GPUContext, rng: np.random.Generator) -> harness.Prepared:
        prep = wgpu_matmul_cases._gather_prepare("Q4_0", 8, 32, [1, 2], 1.0)(ctx, rng)
        prep.reference = prep.reference + 1.0
        return prep

    monkeypatch.setattr(harness, "_CASES", [harness.KernelCase("gather", "Q4_0", "8x32", wrong_reference)])
    result = CliRunner().invoke(main, ["kernels", "test", "--reps", "0"])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "0 passed, 1 failed" in result.output
