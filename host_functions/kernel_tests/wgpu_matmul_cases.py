"""Matmul and embedding-gather cases of the WGSL weight kernels: every weight format against
gguf.quants' dequantization, at decode and prefill shapes, short and long rows, zero and extreme
scales, weights split over several bindings, and the subgroup variant."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from gguf import GGMLQuantizationType

from host_functions.backends.wgpu import weight_kernels as kernels
from host_functions.backends.wgpu.context import GPUContext
from host_functions.formats.quants import QUANT_FORMATS
from host_functions.kernel_tests.harness import Prepared, register_case
from host_functions.kernel_tests.inputs import (
    GATHER_TOL,
    MATMUL_FORMATS,
    MATMUL_TOL,
    matmul_tolerance_scale,
    random_weight,
    reference_dequantize,
)


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
