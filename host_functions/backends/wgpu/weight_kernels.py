"""Fused dequantize + matmul and embedding-gather kernels: selection, specialization, dispatch.

Weights stay in their GGUF form on the GPU. `upload_weight` copies a tensor's raw ggml blocks into
one or more buffers (split by rows when the tensor exceeds the device's storage-binding limit);
`matmul` and `gather_rows` record dispatches into a `Recorder`, one per part, so a whole forward
step is one command encoder:

    ctx = GPUContext.get()
    w = upload_weight(ctx, gguf.tensor("blk.0.ffn_up.weight"))          # GPUWeight, (rows, cols)
    with ctx.recorder() as rec:
        gather_rows(rec, emb, ids_buf, x_buf, n_tokens, scale=gemma_scale)  # x = emb[ids] * scale
        matmul(rec, w, x_buf, y_buf, n_tokens)                              # y[t] = W @ x[t]
    y = ctx.read(y_buf, np.float32, (n_tokens, w.n_rows))

    y = matmul_numpy(ctx, w, x)          # one-shot NumPy in/out (tests, the harness)

Buffers hold float32 activations, token-major: x is (n_tokens, n_cols), out is (n_tokens, out_stride)
with this weight's rows landing at columns out_col .. out_col + n_rows - 1 (so Q, K and V can share
one output). Pipelines come from the quant table: format F uses shaders/dequant_<F.kernel>.wgsl in
front of matmul.wgsl or gather.wgsl; only dequant16() differs between formats.

Every format requires a row length that is a multiple of 16 (one dequant16 chunk); ggml block sizes
(32, 256) guarantee it for quantized formats.

Layouts (`KernelConfig`, chosen per adapter by `default_config`): an invocation owns a register
tile of `rows` rows x up to `tile_t` tokens, so each weight chunk is dequantized once per token
tile and each input read once per `rows` rows. On CPU drivers (llvmpipe), where every storage load
is scalarized per lane, one invocation owns its rows outright (tpr=1: no reduction, no barrier);
on GPUs `subgroups=True` sums a row group's lanes with subgroupAdd, and without subgroups tpr
invocations per row group meet in workgroup memory. Every layout runs in the test suite wherever
the adapter has subgroups (llvmpipe does). shader-f16 is deliberately not used for arithmetic: f16 products
would add a 2^-11 relative rounding per term, thousands of times the f32 error the oracle
comparison allows, and f16 scale fields are decoded exactly with integer ops (common.wgsl) anyway.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from host_functions.backends.wgpu.context import GPUContext, Recorder, workgroup_grid
from host_functions.errors import BackendError, ModelFormatError, UnsupportedError
from host_functions.formats.gguf_file import RawTensor
from host_functions.formats.quants import QuantFormat, quant_format, row_bytes

CHUNK = 16  # weights per dequant16() call
MAX_ROWS = 8  # rows one invocation accumulates at once (matmul.wgsl MAX_ROWS)
MAX_TILE_T = 8  # tokens one invocation accumulates at once (matmul.wgsl MAX_TILE_T)
_SPARE = 4  # bytes after each part so an unaligned 16-byte load near the end stays in bounds


@dataclass(frozen=True)
class WeightPart:
    """Rows row_start .. row_start + n_rows - 1 of a weight, in one GPU buffer."""

    buffer: Any
    row_start: int
    n_rows: int


@dataclass(frozen=True)
class GPUWeight:
    """A 2-D weight resident on the GPU in its GGUF encoding (rows = outputs, cols = inputs)."""

    name: str
    fmt: QuantFormat
    shape: tuple[int, int]  # (n_rows, n_cols), NumPy order
    row_bytes: int
    parts: tuple[WeightPart, ...]

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of encoded weights (what one full pass over the matrix reads)."""
        return self.n_rows * self.row_bytes


@dataclass(frozen=True)
class KernelConfig:
    """Numeric knobs of the matmul kernel (override constants) and which WGSL features it uses.

    wg: invocations per workgroup; tpr: invocations sharing one row group (power of two dividing
    wg); rows: rows per invocation (register tile, 1..MAX_ROWS); tile_t: most tokens per
    invocation (register tile, 1..MAX_TILE_T); subgroups: reduce with subgroupAdd (then a
    workgroup owns one row group and tpr is ignored).
    """

    wg: int = 64
    tpr: int = 1
    rows: int = 2
    tile_t: int = MAX_TILE_T
    subgroups: bool = False

    def __post_init__(self) -> None:
        assert self.wg & (self.wg - 1) == 0 and self.tpr & (self.tpr - 1) == 0 and self.tpr <= self.wg, self
        assert 1 <= self.rows <= MAX_ROWS and 1 <= self.tile_t <= MAX_TILE_T, self

    @property
    def rows_per_group(self) -> int:
        """Weight rows one workgroup owns."""
        return self.rows * (1 if self.subgroups else self.wg // self.tpr)


def default_config(ctx: GPUContext) -> KernelConfig:
    """The tested default per adapter kind.

    CPU drivers (llvmpipe) scalarize every storage load per lane, so loads dominate: one
    invocation per row group (tpr=1, no reduction or barriers), 4 rows x 4 tokens of registers
    (each input read once per 4 rows, each weight once per 4 tokens); larger tiles trade compile
    time for prefill speed (docs/wgpu_backend.md has the figures).
    GPUs: subgroup sums where available (a workgroup per row pair, lanes over chunks, coalesced),
    else 16 invocations per row group with a workgroup-memory tree sum.
    """
    if ctx.is_cpu_adapter:
        return KernelConfig(wg=64, tpr=1, rows=4, tile_t=4)
    if ctx.has_subgroups:
        return KernelConfig(wg=64, rows=2, subgroups=True)
    return KernelConfig(wg=64, tpr=16, rows=2)


def upload_weight(ctx: GPUContext, tensor: RawTensor, max_part_bytes: int | None = None) -> GPUWeight:
    """Copy a 1-D or 2-D tensor's raw bytes to the GPU, split by rows to fit the binding limit.

    Raises UnsupportedError for formats without a kernel or rows that are not a multiple of 16
    weights, ModelFormatError when the stored bytes do not match the shape.
    """
    shape = tensor.shape if len(tensor.shape) == 2 else (1, tensor.shape[0]) if len(tensor.shape) == 1 else None
    if shape is None:
        raise UnsupportedError(f"tensor {tensor.name}: {len(tensor.shape)}-D weights have no matmul kernel")
    n_rows, n_cols = shape
    fmt = quant_format(tensor.qtype, tensor.name)
    if n_cols % CHUNK:
        raise UnsupportedError(f"tensor {tensor.name}: GPU kernels need rows of a multiple of {CHUNK} weights, "
                               f"got {n_cols}")
    rb = row_bytes(tensor.qtype, n_cols, tensor.name)
    raw = tensor.raw_bytes()
    if raw.size != n_rows * rb:
        raise ModelFormatError(f"tensor {tensor.name}: {raw.size} bytes stored, {fmt.name} {shape} needs {n_rows * rb}")
    rows = raw.reshape(n_rows, rb)
    parts = tuple(
        WeightPart(ctx.upload(_with_spare(rows[start:stop])), start, stop - start)
        for start, stop in ctx.split_rows(n_rows, rb, max_part_bytes)
    )
    return GPUWeight(tensor.name, fmt, (n_rows, n_cols), rb, parts)


def token_tile(n_tokens: int, max_tile: int = MAX_TILE_T) -> int:
    """Tokens per invocation: 1 for decode, else the next power of two up to max_tile."""
    return min(max_tile, 1 << max(0, int(n_tokens) - 1).bit_length())


def matmul_pipeline(ctx: GPUContext, fmt: QuantFormat, tile: int, config: KernelConfig) -> Any:
    """The (cached) matmul pipeline for one format, token tile and config."""
    shaders = ["weights.wgsl", f"dequant_{fmt.kernel}.wgsl", "matmul.wgsl"]
    if config.subgroups:
        shaders.append("matmul_subgroup.wgsl")
    return ctx.pipeline(shaders, "main_subgroup" if config.subgroups else "main",
                        {"WG": config.wg, "TPR": config.wg if config.subgroups else config.tpr,
                         "ROWS": config.rows, "TILE_T": tile},
                        enables=("subgroups",) if config.subgroups else ())


def matmul(rec: Recorder, weight: GPUWeight, x: Any, out: Any, n_tokens: int, *,
           x_stride: int | None = None, out_stride: int | None = None, out_col: int = 0, first: int = 0,
           config: KernelConfig | None = None) -> None:
    """Record out[t, out_col + r] = sum_c W[r, c] * x[t, c] for every row r and token first <= t < first + n_tokens.

    x and out are f32 buffer bindings (a GPUBuffer or (buffer, offset, size)); x_stride and
    out_stride are floats between tokens (defaults: n_cols and n_rows). A token's result does not
    depend on `first` or `n_tokens`. Dispatches once per part; raises BackendError for bindings too small.
    """
    if n_tokens < 1:
        return
    ctx = rec.ctx
    config = config or default_config(ctx)
    x_stride = weight.n_cols if x_stride is None else x_stride
    out_stride = weight.n_rows if out_stride is None else out_stride
    assert x_stride % 4 == 0, "x rows must start on vec4 boundaries"
    _check_size(x, (first + n_tokens - 1) * x_stride + weight.n_cols, "x")
    _check_size(out, (first + n_tokens - 1) * out_stride + out_col + weight.n_rows, "out")
    tile = token_tile(n_tokens, config.tile_t)
    pipe = matmul_pipeline(ctx, weight.fmt, tile, config)
    n_tiles = -(-n_tokens // tile)
    for part in weight.parts:
        n_groups = -(-part.n_rows // config.rows_per_group)
        params = struct.pack("<9I", part.n_rows, weight.row_bytes, weight.n_cols // CHUNK, n_tokens,
                             x_stride // 4, out_stride, first * out_stride + out_col + part.row_start, n_groups,
                             first * x_stride // 4)
        gx, gy = workgroup_grid(n_groups, ctx.max_workgroups_per_dim)
        rec.dispatch(pipe, [part.buffer, x, out, params], (gx, gy, n_tiles))


def gather_rows(rec: Recorder, weight: GPUWeight, ids: Any, out: Any, n_tokens: int, *,
                scale: float = 1.0, out_stride: int | None = None, wg: int = 64) -> None:
    """Record out[t, :] = scale * W[ids[t], :] (dequantized) for t < n_tokens.

    ids is a u32 buffer binding; ids outside 0..n_rows-1 leave their output row untouched, so
    callers validate token ids first (gather_numpy does). out_stride is floats between tokens.
    """
    if n_tokens < 1:
        return
    ctx = rec.ctx
    out_stride = weight.n_cols if out_stride is None else out_stride
    assert out_stride % 4 == 0, "out rows must start on vec4 boundaries"
    _check_size(out, (n_tokens - 1) * out_stride + weight.n_cols, "out")
    pipe = ctx.pipeline(["weights.wgsl", f"dequant_{weight.fmt.kernel}.wgsl", "gather.wgsl"], "main", {"WG": wg})
    n_chunks = weight.n_cols // CHUNK
    for part in weight.parts:
        params = struct.pack("<6If4x", part.n_rows, weight.row_bytes, n_chunks, n_tokens, part.row_start,
                             out_stride // 4, scale)
        rec.dispatch(pipe, [part.buffer, ids, out, params], (-(-n_chunks // wg), n_tokens, 1))


def matmul_numpy(ctx: GPUContext, weight: GPUWeight, x: np.ndarray, config: KernelConfig | None = None) -> np.ndarray:
    """W @ x[t] for every row of a NumPy (n_tokens, n_cols) x, on the GPU; returns (n_tokens, n_rows)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, weight.n_cols)
    x_buf = ctx.upload(x)
    out = ctx.empty(x.shape[0] * weight.n_rows * 4)
    with ctx.recorder() as rec:
        matmul(rec, weight, x_buf, out, x.shape[0], config=config)
    return ctx.read(out, np.float32, (x.shape[0], weight.n_rows))


def gather_numpy(ctx: GPUContext, weight: GPUWeight, ids: Sequence[int] | np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Dequantized rows `ids` of a table (times `scale`), on the GPU; returns (len(ids), n_cols) float32.

    Raises BackendError for ids outside 0..n_rows-1.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= weight.n_rows):
        raise BackendError(f"token id out of range 0..{weight.n_rows - 1} for {weight.name}")
    out = ctx.empty(ids.size * weight.n_cols * 4)
    with ctx.recorder() as rec:
        gather_rows(rec, weight, ctx.upload(ids.astype(np.uint32)), out, ids.size, scale=scale)
    return ctx.read(out, np.float32, (ids.size, weight.n_cols))


def _with_spare(rows: np.ndarray) -> np.ndarray:
    flat = rows.reshape(-1)
    return np.concatenate([flat, np.zeros(_SPARE, np.uint8)])


def _check_size(binding: Any, n_floats: int, what: str) -> None:
    size = binding[2] if isinstance(binding, tuple) else binding.size
    if size < n_floats * 4:
        raise BackendError(f"{what} buffer holds {size} bytes, the kernel needs {n_floats * 4}")
