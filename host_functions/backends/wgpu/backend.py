"""The wgpu backend: the whole forward pass as WGSL compute shaders on one command encoder.

Weights are uploaded once in their GGUF encoding (kernels.upload_weight; never dequantized on the
CPU), norm weights as the F32 they are stored as. Activations and KV caches are GPU buffers:
embed() and layer() only record dispatches into a pending encoder, logits() submits it and reads
back nothing but the logits. A step (`step`) puts the rows of all its items in one activation
buffer: norms, matmuls and the FFN run once over every row, rope and attention per item over its
own cache (bound at the item's row offset), then one output projection over the logit rows any
item wants; one encoder, one submit, one read-back. A sequence's work is recorded only inside the
step that runs it, so nothing one sequence records can run (or be paid for) in another's step.

The KV cache is paged: each layer has one K and one V buffer holding the model's whole pool
(host_functions.kv.pool: BLOCK_TOKENS positions per block, sized from the pool's budget), and a
sequence's positions live in the blocks of its block table. A step uploads one small table of its
rows (position, where the row's sequence's block table starts) and its sequences' block tables
concatenated; rope writes each new key/value at its block's slot and attention reads through the
tables, one dispatch each per layer for every sequence of the step. Nothing is copied when a
sequence grows, truncation only gives blocks back, and a sequence's result does not depend on
where its blocks lie. The pool buffers are bound only up to the highest block the step uses, so
the driver commits memory for the blocks in use, not for the budget (block ids are handed out
lowest first).

The layer's weights, which of them each product (Q|K|V, output, gate|up, down) runs and which norms
a layer has come from the structure table (arch.layout); each output (q, k, v, o, gate, up, down) has
its own GPU weight writing its own scratch buffer, a matrix that holds several (phi3's attn_qkv and
gate|up ffn_up) split by rows at upload, and a bias vector (qwen2's q, k, v) is added to its output
after the product. Rope factors (Llama 3.1's rope_freqs, LongRoPE's short or long set, picked per
sequence by the context it is set up for) go up per step as one row per token.

LoRA is applied unmerged (`y = W x + s * B (A x)`) after each adapted weight (q, k, v, output,
gate, up, down): per adapter of the step one shrink and one expand (lora.wgsl) with a per-row
adapter index (0 for its sequences' rows, -1 elsewhere) and a per-row scale, so one step mixes
adapters and rows without one. An adapter's A/B matrices are uploaded on first use and dropped
with the adapter when the adapter pool lets it go. A sequence that asked for merged LoRA
(lora.merged) runs its rows through the cache entry's F32 copies of the adapted weights instead:
the step puts the rows of each entry last and together, the base weights project the rows before
them and each entry's weights its own row range (one matmul dispatch per part); the copies are
built on the host from the dequantized base plus s * B @ A, uploaded once and released with the
entry. Every matmul computes a row on its own, so a row's bits depend only on its own sequence.
Matmuls (fused dequantization) and the embedding gather are weight_kernels'; norms, rope,
attention and element-wise ops are ops'.

llama.cpp is the oracle, so its deliberate roundings are mirrored: the KV cache is f16 by default
(its default cache type) with the query and probabilities rounded to f16 in attention, and inputs
of F16/BF16 weights are rounded to that type before the matmul (ggml's vec_dot_type).

Per layer (see the Backend docstring for the step protocol; buffers are (n_tokens, width) f32):
    h = rmsnorm(x) * attn_norm                          norm.wgsl
    q, k, v = Wq h (+ bq), Wk h (+ bk), Wv h (+ bv)     matmul, elementwise.wgsl (biases)
    q' = rope(qnorm(q)); K[pos..] = rope(knorm(k)); V[pos..] = v   rope.wgsl (x3)
    attn = attention(q', K, V)                          attention.wgsl
    o = Wo attn;  x += o  |  x += rmsnorm(o) * post_attention_norm (gemma3)
    h = rmsnorm(x) * ffn_norm; f = act(Wgate h) * Wup h; down = Wdown f
    x += down  |  x += rmsnorm(down) * post_ffw_norm (gemma3)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from gguf import GGMLQuantizationType

from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import OUTPUT_WIDTHS, PROJECTIONS, Matrix, Output, bias_name, weight_name
from host_functions.backends.base import (
    Backend,
    StepItem,
    head_outputs,
    in_grouped_order,
    merged_ranges,
    row_rope_factors,
    wanted_rows,
)
from host_functions.backends.wgpu import ops
from host_functions.backends.wgpu import weight_kernels as kernels
from host_functions.backends.wgpu.context import GPUContext, Recorder
from host_functions.errors import BackendError, UnsupportedError
from host_functions.formats.gguf_file import RawTensor
from host_functions.kv.block_table import KVCache
from host_functions.kv.pool import BLOCK_TOKENS, KVPool, default_budget
from host_functions.lora.adapter import MAX_RANK, LoraAdapter
from host_functions.lora.merged import MergedLora, MergedLoraCache, fused_float_weight

# llama.cpp converts a matmul's input to the weight's own float type for F16/BF16 weights; so do we.
_INPUT_ROUNDING: dict[str, ops.Rounding] = {"F16": "f16", "BF16": "bf16"}
# A real GPU allocates the KV pool's buffers up front in its own memory, which free host memory says
# nothing about: there the default budget is at most this (--kv-memory asks for more).
GPU_DEFAULT_KV_BUDGET = 1 << 30


@dataclass
class GPUActivations:
    """Hidden states of one step on the GPU: `buffer` holds (n_tokens, n_embd) float32."""

    buffer: Any
    n_tokens: int


@dataclass
class _Segment:
    """One sequence's rows in a step's activations: its cache, position, first row, row count."""

    cache: KVCache
    pos: int
    first: int
    n: int
    n_ctx: int  # the context its sequence is set up for (picks LongRoPE's factors)


@dataclass
class _Paging:
    """Where a step's rows read and write the paged KV pool, uploaded once per step.

    rows: (n_tokens, 2) u32, each row's position and the start of its sequence's table in `tables`;
    tables: the block tables of the step's sequences, concatenated (u32); kv_bytes: how much of
    each layer's pool buffers the step touches (up to its highest block), the size they are bound at;
    rope_factors: (n_tokens, head_dim/2) f32, each row's rope factors (None for a model without any).
    """

    rows: Any
    tables: Any
    kv_bytes: int
    rope_factors: Any | None


@dataclass(frozen=True)
class _GPUPair:
    """One LoRA pair on the GPU: a (rank, n_in) f32, and b's rows of each output its weight holds as
    (buffer (n_out, rank) f32, n_out); factor = alpha / rank (or 1)."""

    a: Any
    b: dict[Output, tuple[Any, int]]
    rank: int
    n_in: int
    factor: float


@dataclass
class _LoraRun:
    """One adapter of a step: its pairs, which rows use it (adapter index 0, else -1), their scales."""

    pairs: dict[str, _GPUPair]
    index: Any  # (n_rows,) i32 on the GPU
    user_scales: np.ndarray  # (n_rows,) float64, 0 for rows without this adapter
    _scales: dict[float, Any] = field(default_factory=dict)  # factor -> (n_rows,) f32 on the GPU

    def scales(self, ctx: GPUContext, factor: float) -> Any:
        """Each row's user scale * factor (a pair's alpha / rank) on the GPU, uploaded once per step and factor."""
        buf = self._scales.get(factor)
        if buf is None:
            buf = self._scales[factor] = ctx.upload((self.user_scales * factor).astype(np.float32))
        return buf


@dataclass
class _StepLora:
    """A step's LoRA: the unmerged runs, and the merged entries' row ranges (the last rows, from base_rows on)."""

    runs: list[_LoraRun]
    merged: list[tuple[slice, MergedLora]]
    base_rows: int


@dataclass(frozen=True)
class _Matmul:
    """out = weight x over rows first .. first + n - 1, x rounded first as `rounding` says (None: as it is)."""

    weight: kernels.GPUWeight
    out: Any
    rounding: ops.Rounding | None
    first: int
    n: int


@dataclass
class _Layer:
    """One transformer block's weights on the GPU: the weight of each output (q, k, ..., down; a matrix
    holding several, as Phi-3's attn_qkv, is split by rows at upload), its norms by GGUF name (arch.layout)
    and the bias of each output that has one."""

    weights: dict[Output, kernels.GPUWeight]
    norms: dict[str, Any]  # F32 vectors; an architecture without a norm has no entry
    biases: dict[Output, Any]  # F32 vectors (qwen2's q, k, v)


class _Scratch:
    """Per-step intermediate buffers, sized for the largest step so far and shared by all layers.

    Reusing them across layers and sequences is safe: every use is recorded in order into one
    encoder, and no value in them outlives the layer() call that produced it.
    """

    def __init__(self, ctx: GPUContext, config: ModelConfig) -> None:
        self._ctx, self._config, self.n_tokens = ctx, config, 0

    def ensure(self, n_tokens: int) -> None:
        if n_tokens <= self.n_tokens:
            return
        cfg, empty = self._config, self._ctx.empty
        self.h = empty(n_tokens * cfg.n_embd * 4)  # (n, n_embd): normed input of a product
        # (n, width) each: what the products compute (q, k, v, o, gate, up, down)
        self.out: dict[Output, Any] = {out: empty(n_tokens * cfg.width(width) * 4)
                                       for out, width in OUTPUT_WIDTHS.items()}
        self.q = empty(n_tokens * cfg.q_dim * 4)  # (n, n_head, head_dim): q normed and rotated
        self.attn = empty(n_tokens * cfg.q_dim * 4)  # (n, n_head, head_dim)
        self.f = empty(n_tokens * cfg.n_ff * 4)  # (n, n_ff): act(gate) * up
        self.rounded = empty(n_tokens * max(cfg.width(p.inp) for p in PROJECTIONS) * 4)  # a matmul input as f16/bf16
        self.lora_t = empty(n_tokens * MAX_RANK * 4)  # (n, rank): A x of one LoRA pair
        self.n_tokens = n_tokens


class WgpuBackend(Backend):
    """Forward pass on a WebGPU device (any Vulkan/Metal/D3D12 GPU, or llvmpipe on the CPU)."""

    name: ClassVar[str] = "wgpu"

    def __init__(self, config: ModelConfig, tensors: Mapping[str, RawTensor],
                 progress: Callable[[float], None] | None = None, kv_f16: bool = True) -> None:
        """Upload every weight the forward pass reads; raises BackendError without a usable GPU.

        kv_f16 (llama.cpp's default cache type) stores KV caches as f16 and rounds attention's
        operands like llama.cpp; False keeps them f32 (twice the memory, no rounding).
        """
        super().__init__(config, tensors)
        self.ctx = GPUContext.get()
        self.kv_f16 = kv_f16
        if config.head_dim > ops.MAX_HEAD_DIM or config.head_dim % 2:
            raise UnsupportedError(f"the rope and attention kernels support an even head_dim <= "
                                   f"{ops.MAX_HEAD_DIM}, got {config.head_dim}")
        matrices = {weight_name(i, m.name): m for i in range(config.n_layers) for m in config.layout.matrices}
        names = [name for name in config.expected_tensors() if name not in config.rope_factor_sets]
        uploaded: dict[str, Any] = {}
        for done, name in enumerate(names, 1):
            matrix = matrices.get(name)
            uploaded[name] = self._upload(tensors[name]) if matrix is None else self._upload_split(tensors[name],
                                                                                                    matrix)
            if progress:
                progress(done / len(names))
        self.token_embd: kernels.GPUWeight = uploaded["token_embd.weight"]
        self.output: kernels.GPUWeight = self.token_embd if config.tied_output else uploaded["output.weight"]
        self.output_norm = uploaded["output_norm.weight"]
        # the rope factors go up per step, each row's own (LongRoPE's depend on the row's sequence)
        self.rope_factors = {name: np.asarray(tensors[name].data, np.float32) for name in config.rope_factor_sets}
        self.layers = [self._layer_weights(i, uploaded) for i in range(config.n_layers)]
        self._scratch = _Scratch(self.ctx, config)
        self._rec: Recorder | None = None
        self._kv_k: list[Any] = []  # per layer: the KV pool's keys, (pool slots, n_head_kv, head_dim)
        self._kv_v: list[Any] = []
        # Each adapter's pairs on the GPU, dropped with the adapter when the adapter pool lets it go.
        self._adapters: weakref.WeakKeyDictionary[LoraAdapter, dict[str, _GPUPair]] = weakref.WeakKeyDictionary()
        self.dispatches_submitted = 0  # every dispatch ever submitted (what a step cost, for tests and traces)
        self._lock = threading.RLock()  # one encoder: concurrent callers record one at a time
        self.merged_lora = MergedLoraCache(self, config)

    def _upload_split(self, raw: RawTensor, matrix: Matrix) -> dict[Output, kernels.GPUWeight]:
        """A layer matrix as one GPU weight per output it holds: its rows of that output (whole rows of
        GGUF blocks, so any format splits), each written by one matmul into that output's buffer."""
        if len(matrix.holds) == 1:
            return {matrix.holds[0]: self._upload(raw)}
        rows = raw.raw_bytes().reshape(raw.shape[0], -1)
        return {out: self._upload(RawTensor(f"{raw.name}[{out}]", raw.qtype, (span.stop - span.start, raw.shape[1]),
                                            rows[span]))
                for out, span in self.config.matrix_rows(matrix).items()}

    def _layer_weights(self, i: int, uploaded: Mapping[str, Any]) -> _Layer:
        """Block i's uploaded weights by output, its norms, and its bias vectors split by output."""
        layout, biases = self.config.layout, dict[Output, Any]()
        for m in layout.matrices:
            if m.name in layout.biases:
                vector = np.asarray(self.tensors[bias_name(i, m.name)].data, np.float32)
                biases |= {out: self.ctx.upload(vector[span]) for out, span in self.config.matrix_rows(m).items()}
        return _Layer({out: w for m in layout.matrices for out, w in uploaded[weight_name(i, m.name)].items()},
                      {n.name: uploaded[weight_name(i, n.name)] for n in layout.norms}, biases)

    def _upload(self, tensor: RawTensor) -> Any:
        """2-D weights stay in their GGUF encoding; 1-D F32 vectors (norms) upload as they are."""
        if len(tensor.shape) == 2:
            return kernels.upload_weight(self.ctx, tensor)
        if tensor.data.dtype != np.float32:
            raise UnsupportedError(f"tensor {tensor.name}: 1-D weights must be F32, got {tensor.qtype.name}")
        return self.ctx.upload(np.asarray(tensor.data))

    def _recorder(self) -> Recorder:
        if self._rec is None:
            self._rec = Recorder(self.ctx)
        return self._rec

    # ---- Backend API ---------------------------------------------------------------------------

    def kv_element_bytes(self) -> int:
        return 2 if self.kv_f16 else 4

    def _kv_layer_block_bytes(self) -> int:
        """Bytes one block takes in one layer's K (or V) pool buffer."""
        return BLOCK_TOKENS * self.config.kv_dim * self.kv_element_bytes()

    def configure_kv(self, budget_bytes: int | None = None) -> KVPool:
        """The model's KV pool, at most as many blocks as one storage binding holds per layer (the
        attention kernel binds a layer's whole pool buffer; llvmpipe: 128 MiB). The default budget
        comes from free memory on a CPU adapter (whose buffers are host memory, committed as used)
        and is at most GPU_DEFAULT_KV_BUDGET on a real GPU. QuotaExceeded if not one block fits."""
        if budget_bytes is None:
            budget_bytes = default_budget() if self.ctx.is_cpu_adapter else min(default_budget(), GPU_DEFAULT_KV_BUDGET)
        most = self.ctx.max_binding_size // self._kv_layer_block_bytes() * self.kv_block_bytes(BLOCK_TOKENS)
        return super().configure_kv(min(budget_bytes, most))

    def _allocate_kv(self, pool: KVPool) -> None:
        # Buffers are committed lazily by the driver as the bound prefix grows (see the module docstring).
        size = pool.n_blocks * self._kv_layer_block_bytes()
        with self._lock:
            self._kv_k = [self.ctx.empty(size) for _ in range(self.config.n_layers)]
            self._kv_v = [self.ctx.empty(size) for _ in range(self.config.n_layers)]

    def _step(self, items: Sequence[StepItem], n_layers: int) -> list[np.ndarray | None]:
        """The step with its items grouped (base.in_grouped_order: each merged entry's rows last
        and together); a row's result does not depend on its place."""
        return in_grouped_order(items, lambda ordered: self._step_in_order(ordered, n_layers))

    def _step_in_order(self, items: Sequence[StepItem], n_layers: int) -> list[np.ndarray | None]:
        """All items' rows in one activation buffer: norms, matmuls (and LoRA) and the FFN over every
        row at once, rope and attention over every sequence's own blocks; one encoder, one submit,
        one read-back."""
        cfg = self.config
        with self._lock:
            if self._rec is not None:  # a caller of the per-sequence API left work pending: not this step's
                self._submit()
            segments, first = [], 0
            for item in items:
                # Every written position must be in the item's own table: the tables are concatenated,
                # so a missing block would read the next sequence's.
                item.cache.reserve(item.pos + len(item.tokens))
                segments.append(_Segment(item.cache, item.pos, first, len(item.tokens), item.context))
                first += len(item.tokens)
            x = self.embed(np.concatenate([item.tokens for item in items]))
            paging = self._paging(segments)
            merged = merged_ranges([(slice(seg.first, seg.first + seg.n), item.merged)
                                    for item, seg in zip(items, segments, strict=True)])
            lora = _StepLora(self._lora_runs(items, segments, x.n_tokens), merged,
                             merged[0][0].start if merged else x.n_tokens)
            for index in range(n_layers):
                self._block(index, x, paging, lora)
            picks = [wanted_rows(item, seg.first) for item, seg in zip(items, segments, strict=True)]
            return head_outputs(items, picks, cfg.n_vocab, lambda rows: self._logit_rows([(x, int(r)) for r in rows]),
                                lambda rows: self._normed_rows(x, rows))

    def _paging(self, segments: Sequence[_Segment]) -> _Paging:
        """Upload the step's rows and block tables (a few bytes per row and block)."""
        rows, tables, start = [], [], 0
        for seg in segments:
            table = seg.cache.blocks[: seg.cache.pool.blocks_for(seg.pos + seg.n)]
            rows.append(np.stack([np.arange(seg.pos, seg.pos + seg.n), np.full(seg.n, start)], axis=1))
            tables += table
            start += len(table)
        kv_bytes = (max(tables, default=0) + 1) * self._kv_layer_block_bytes()
        return _Paging(self.ctx.upload(np.concatenate(rows).astype(np.uint32)),
                       self.ctx.upload(np.asarray(tables, np.uint32)), kv_bytes, self._row_rope_factors(segments))

    def _row_rope_factors(self, segments: Sequence[_Segment]) -> Any | None:
        """Each row's rope factors, those its sequence's context picks, on the GPU (None without factors)."""
        factors = row_rope_factors(self.config, self.rope_factors, [(seg.n, seg.n_ctx) for seg in segments])
        return None if factors is None else self.ctx.upload(factors)

    def _lora_runs(self, items: Sequence[StepItem], segments: Sequence[_Segment], n_rows: int) -> list[_LoraRun]:
        """Per adapter of the step: its pairs on the GPU and which rows use it unmerged at which scale."""
        runs: dict[int, tuple[LoraAdapter, np.ndarray, np.ndarray]] = {}
        for item, seg in zip(items, segments, strict=True):
            if item.lora is None or item.merged is not None:
                continue
            adapter, scale = item.lora
            _, index, user_scales = runs.setdefault(id(adapter), (adapter, np.full(n_rows, -1, np.int32),
                                                                   np.zeros(n_rows)))
            index[seg.first : seg.first + seg.n] = 0
            user_scales[seg.first : seg.first + seg.n] = scale
        return [_LoraRun(self._gpu_pairs(adapter), self.ctx.upload(index), user_scales)
                for adapter, index, user_scales in runs.values()]

    def _gpu_pairs(self, adapter: LoraAdapter) -> dict[str, _GPUPair]:
        """The adapter's pairs on the GPU, uploaded on its first step."""
        pairs = self._adapters.get(adapter)
        if pairs is None:
            matrices = {weight_name(i, m.name): m for i in range(self.config.n_layers)
                         for m in self.config.layout.matrices}
            pairs = self._adapters[adapter] = {
                name: _GPUPair(self.ctx.upload(pair.a),
                               {out: (self.ctx.upload(np.ascontiguousarray(pair.b[span])), span.stop - span.start)
                                for out, span in self.config.matrix_rows(matrices[name]).items()},
                               pair.rank, pair.a.shape[1], pair.scale(1.0))
                for name, pair in adapter.pairs.items()}
        return pairs

    def embed(self, tokens: np.ndarray) -> GPUActivations:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.n_vocab):
            raise BackendError(f"token id out of range 0..{self.config.n_vocab - 1}")
        n = int(tokens.size)
        with self._lock:
            x = self.ctx.empty(max(n, 1) * self.config.n_embd * 4)
            kernels.gather_rows(self._recorder(), self.token_embd, self.ctx.upload(tokens.astype(np.uint32)), x, n,
                                scale=self.config.embedding_scale)
        return GPUActivations(x, n)

    def layer(self, index: int, x: GPUActivations, cache: KVCache, pos: int) -> GPUActivations:
        assert isinstance(x, GPUActivations)
        with self._lock:
            cache.reserve(pos + x.n_tokens)
            paging = self._paging([_Segment(cache, pos, 0, x.n_tokens, cache.capacity)])
            self._block(index, x, paging, _StepLora([], [], x.n_tokens))
        return x

    def _block(self, index: int, x: GPUActivations, paging: _Paging, lora: _StepLora) -> None:
        with self._lock:
            rec = self._recorder()
            self._scratch.ensure(x.n_tokens)
            self._attention_block(rec, index, x, paging, lora)
            self._ffn_block(rec, index, x, lora)

    def logits(self, x: GPUActivations, last_only: bool = True) -> np.ndarray:
        first = x.n_tokens - 1 if last_only else 0
        with self._lock:
            return self._logit_rows([(x, row) for row in range(first, x.n_tokens)])

    def final_norm(self, x: GPUActivations) -> np.ndarray:
        with self._lock:
            return self._normed_rows(x, np.arange(x.n_tokens))

    def _normed_rows(self, x: GPUActivations, rows: np.ndarray) -> np.ndarray:
        """The final norm of the given rows of x, read back: float32 (len(rows), n_embd)."""
        cfg = self.config
        normed = self.ctx.empty(max(len(rows), 1) * cfg.n_embd * 4)
        rec = self._recorder()
        for i, row in enumerate(rows):
            ops.rms_norm(rec, x.buffer, self.output_norm, normed, 1, cfg.n_embd, cfg.norm_eps,
                         in_offset=int(row) * cfg.n_embd, out_offset=i * cfg.n_embd)
        self._submit()
        return self.ctx.read(normed, np.float32, (len(rows), cfg.n_embd))

    def _logit_rows(self, sources: list[tuple[GPUActivations, int]]) -> np.ndarray:
        """Final norm + output projection of the given (activations, row) rows, recorded after the
        pending work; one submit and one read-back per batch of rows that fits a storage binding."""
        cfg = self.config
        out = np.empty((len(sources), cfg.n_vocab), np.float32)
        if not sources:
            return out
        # Logit rows are read back in batches that fit one storage binding (262144-wide vocabularies).
        per_batch = max(1, min(len(sources), self.ctx.max_binding_size // (cfg.n_vocab * 4)))
        self._scratch.ensure(per_batch)
        normed = self.ctx.empty(per_batch * cfg.n_embd * 4)
        logits = self.ctx.empty(per_batch * cfg.n_vocab * 4)
        for start in range(0, len(sources), per_batch):
            batch = sources[start : start + per_batch]
            rec = self._recorder()
            for i, (x, row) in enumerate(batch):
                ops.rms_norm(rec, x.buffer, self.output_norm, normed, 1, cfg.n_embd, cfg.norm_eps,
                             in_offset=row * cfg.n_embd, out_offset=i * cfg.n_embd)
            output = _Matmul(self.output, logits, _rounding(self.output), 0, len(batch))
            self._project(rec, normed, [output], len(batch))
            self._submit()
            out[start : start + len(batch)] = self.ctx.read(logits, np.float32, (len(batch), cfg.n_vocab))
        return out

    # ---- merged LoRA (lora.merged.MergeHost): F32 copies of the products' weights on the GPU ----

    def float_weight(self, layer: int, key: str) -> np.ndarray:
        return fused_float_weight(self.projection_tensors(layer, key))

    def merged_nbytes(self, layer: int, key: str) -> int:
        return sum(raw.shape[0] * raw.shape[1] * 4 for raw in self.projection_tensors(layer, key))

    def merged_projection(self, layer: int, key: str, weight: np.ndarray) -> dict[Output, kernels.GPUWeight]:
        """Each output's rows of the merged `weight` as an F32 GPU weight, by output (q, k, ...), as the
        base weights are kept; their buffers go when the cache drops the entry holding them."""
        parts = {}
        for out, span in self.config.output_columns(key).items():
            rows = np.ascontiguousarray(weight[span], np.float32)
            with self._lock:  # one caller at a time on the device, like every other upload of this backend
                parts[out] = kernels.upload_weight(self.ctx, RawTensor(f"blk.{layer}.{key}[{out}]",
                                                                       GGMLQuantizationType.F32, rows.shape, rows))
        return parts

    def weight_bytes_per_token(self) -> int:
        return sum(w.nbytes for layer in self.layers for w in layer.weights.values()) + self.output.nbytes

    # ---- the two halves of a block -------------------------------------------------------------

    def _attention_block(self, rec: Recorder, index: int, x: GPUActivations, paging: _Paging,
                         lora: _StepLora) -> None:
        cfg, w, s, n = self.config, self.layers[index], self._scratch, x.n_tokens
        ops.rms_norm(rec, x.buffer, w.norms["attn_norm"], s.h, n, cfg.n_embd, cfg.norm_eps)
        self._product(rec, index, "qkv", s.h, n, lora)
        # rope and attention of every sequence at once: each row's position, each sequence's blocks
        rope = dict(pos=0, base=cfg.layer_rope_base(index), neox=cfg.rope_layout == "neox", eps=cfg.norm_eps,
                    factors=paging.rope_factors, mscale=cfg.rope_attn_factor, rows=paging.rows,
                    block_tokens=BLOCK_TOKENS)
        k_pool, v_pool = (self._kv_k[index], 0, paging.kv_bytes), (self._kv_v[index], 0, paging.kv_bytes)
        ops.rope(rec, s.out["q"], s.q, n, cfg.n_head, cfg.head_dim, norm_weight=w.norms.get("attn_q_norm"), **rope)
        ops.rope(rec, s.out["k"], k_pool, n, cfg.n_head_kv, cfg.head_dim, norm_weight=w.norms.get("attn_k_norm"),
                 out_f16=self.kv_f16, table=paging.tables, **rope)
        ops.rope(rec, s.out["v"], v_pool, n, cfg.n_head_kv, cfg.head_dim, rotate=False, out_f16=self.kv_f16,
                 table=paging.tables, **rope)
        ops.attention(rec, s.q, k_pool, v_pool, s.attn, n, cfg.n_head, cfg.n_head_kv, cfg.head_dim, 0,
                      cfg.layer_window(index), cfg.attention_scale, kv_f16=self.kv_f16, rows=paging.rows,
                      table=paging.tables, block_tokens=BLOCK_TOKENS)
        self._product(rec, index, "attn_output", s.attn, n, lora)
        self._residual(rec, x, s.out["o"], w.norms.get("post_attention_norm"))

    def _ffn_block(self, rec: Recorder, index: int, x: GPUActivations, lora: _StepLora) -> None:
        cfg, w, s, n = self.config, self.layers[index], self._scratch, x.n_tokens
        ops.rms_norm(rec, x.buffer, w.norms["ffn_norm"], s.h, n, cfg.n_embd, cfg.norm_eps)
        self._product(rec, index, "gate_up", s.h, n, lora)
        ops.gated(rec, s.f, s.out["gate"], s.out["up"], n * cfg.n_ff, cfg.ffn_activation)
        self._product(rec, index, "ffn_down", s.f, n, lora)
        self._residual(rec, x, s.out["down"], w.norms.get("post_ffw_norm"))

    def _product(self, rec: Recorder, index: int, key: str, x: Any, n: int, lora: _StepLora) -> None:
        """Product `key` of layer `index` over x, the weight W of each of its outputs into that output's
        scratch buffer: the base W (+ s B (A x) for the rows of each unmerged adapter that adapts W's
        matrix) over the rows before lora.base_rows, each merged entry's copy of W (the base W where it
        leaves W alone) over its own rows; then the output's bias, if it has one. Rows round their input
        as the base weight asks, merged or not."""
        layer, out = self.layers[index], self._scratch.out
        matrices = self.config.layout.projection_matrices(key)
        outputs = [o for m in matrices for o in m.holds]
        base = layer.weights
        matmuls = [_Matmul(base[o], out[o], _rounding(base[o]), 0, lora.base_rows) for o in outputs]
        for rows, entry in lora.merged:
            copies = entry.projection(index, key) or {}
            matmuls += [_Matmul(copies.get(o, base[o]), out[o], _rounding(base[o]), rows.start,
                                rows.stop - rows.start) for o in outputs]
        self._project(rec, x, matmuls, n)
        for run in lora.runs:
            for m in matrices:
                pair = run.pairs.get(weight_name(index, m.name))
                if pair is None:
                    continue
                t = self._scratch.lora_t
                scales = run.scales(self.ctx, pair.factor)
                ops.lora_shrink(rec, x, pair.a, run.index, scales, t, n, pair.n_in, pair.rank)
                for o, (b, n_out) in pair.b.items():
                    ops.lora_expand(rec, t, b, run.index, out[o], n, n_out, pair.rank)
        for o in outputs:
            if o in layer.biases:
                ops.add_bias(rec, out[o], layer.biases[o], n, self.config.width(OUTPUT_WIDTHS[o]))

    def _project(self, rec: Recorder, x: Any, matmuls: list[_Matmul], n: int) -> None:
        """Each matmul over its rows of the input x (n rows), which it sees rounded as it asks."""
        held = None  # the rounding scratch.rounded currently holds x in (all n rows)
        for mm in matmuls:
            if mm.rounding is not None and mm.rounding != held:
                ops.round_to(rec, self._scratch.rounded, x, n * mm.weight.n_cols, mm.rounding)
                held = mm.rounding
            kernels.matmul(rec, mm.weight, x if mm.rounding is None else self._scratch.rounded, mm.out, mm.n,
                           first=mm.first)

    def _residual(self, rec: Recorder, x: GPUActivations, a: Any, post_norm: Any) -> None:
        """x += a, or x += rmsnorm(a) * post_norm for gemma3's sandwich norms."""
        cfg = self.config
        if post_norm is None:
            ops.add(rec, x.buffer, a, x.n_tokens * cfg.n_embd)
        else:
            ops.rms_norm(rec, a, post_norm, x.buffer, x.n_tokens, cfg.n_embd, cfg.norm_eps, add=True)

    def _submit(self) -> None:
        rec, self._rec = self._recorder(), None
        self.dispatches_submitted += rec.n_dispatches
        rec.submit()


def _rounding(weight: kernels.GPUWeight) -> ops.Rounding | None:
    """How a matmul's input is rounded for `weight` (llama.cpp's vec_dot_type for F16/BF16 weights)."""
    return _INPUT_ROUNDING.get(weight.fmt.name)
