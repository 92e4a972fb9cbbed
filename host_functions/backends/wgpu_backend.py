"""The wgpu backend: the whole forward pass as WGSL compute shaders on one command encoder.

Weights are uploaded once in their GGUF encoding (kernels.upload_weight; never dequantized on the
CPU), norm weights as the F32 they are stored as. Activations and KV caches are GPU buffers:
embed() and layer() only record dispatches into a pending encoder, logits() submits it and reads
back nothing but the logits. A step (`step`) puts the rows of all its items in one activation
buffer: norms, matmuls and the FFN run once over every row, rope and attention per item over its
own cache (bound at the item's row offset), then one output projection over the logit rows any
item wants; one encoder, one submit, one read-back. A sequence's work is recorded only inside the
step that runs it, so nothing one sequence records can run (or be paid for) in another's step. KV blocks are accounted in the model's pool (budget, peak,
waiting); the storage is still one growing buffer pair per layer and sequence. Matmuls (fused dequantization) and the embedding gather are the
kernels module's; norms, rope, attention and element-wise ops are wgpu_ops'.

llama.cpp is the oracle, so its deliberate roundings are mirrored: the KV cache is f16 by default
(its default cache type) with the query and probabilities rounded to f16 in attention, and inputs
of F16/BF16 weights are rounded to that type before the matmul (ggml's vec_dot_type).

Per layer (see the Backend docstring for the step protocol; buffers are (n_tokens, width) f32):
    h = rmsnorm(x) * attn_norm                          norm.wgsl
    q_raw, k_raw, v_raw = Wq h, Wk h, Wv h              matmul
    q = rope(qnorm(q_raw)); K[pos..] = rope(knorm(k_raw)); V[pos..] = v_raw   rope.wgsl (x3)
    attn = attention(q, K, V)                           attention.wgsl
    a = Wo attn;  x += a  |  x += rmsnorm(a) * post_attention_norm (gemma3)
    h = rmsnorm(x) * ffn_norm; f = act(Wgate h) * Wup h; d = Wdown f
    x += d  |  x += rmsnorm(d) * post_ffw_norm (gemma3)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendError, UnsupportedError

from .. import kernels
from ..config import ModelConfig
from ..gguf_file import RawTensor
from ..kv_pool import KVPool
from . import Backend, KVCache, StepItem, split_logits, wanted_rows
from . import wgpu_ops as ops
from .wgpu_context import GPUContext, Recorder

# llama.cpp converts a matmul's input to the weight's own float type for F16/BF16 weights; so do we.
_INPUT_ROUNDING: dict[str, ops.Rounding] = {"F16": "f16", "BF16": "bf16"}
_MIN_CACHE_POSITIONS = 16  # a fresh cache layer's first allocation (then doubling)


@dataclass
class GPUActivations:
    """Hidden states of one step on the GPU: `buffer` holds (n_tokens, n_embd) float32."""

    buffer: Any
    n_tokens: int


class WgpuKVCache(KVCache):
    """Per-layer K and V buffers of (positions, n_head_kv, head_dim), f32 or packed f16.

    Each layer's buffers grow by doubling up to `capacity` (recorded as GPU copies in the step
    that needs the room), so short sequences stay small.
    """

    def __init__(self, pool: KVPool, ctx: GPUContext, config: ModelConfig, capacity: int, f16: bool) -> None:
        super().__init__(pool, capacity)
        self.f16 = f16
        self.row_elements = config.kv_dim
        self.row_bytes = config.kv_dim * (2 if f16 else 4)
        if capacity * self.row_bytes > ctx.max_binding_size:
            raise BackendError(f"a KV cache of {capacity} positions needs {capacity * self.row_bytes} bytes per "
                               f"layer, over the GPU's binding limit of {ctx.max_binding_size}")
        self._ctx = ctx
        self.k: list[Any] = [None] * config.n_layers
        self.v: list[Any] = [None] * config.n_layers
        self.allocated = [0] * config.n_layers  # positions each layer's buffers hold

    def grow(self, rec: Recorder, layer: int, n_positions: int) -> None:
        """Make layer `layer` hold at least n_positions, copying what it holds into larger buffers."""
        self.reserve(n_positions)  # the pool's blocks first: capacity and budget are checked there
        old = self.allocated[layer]
        if n_positions <= old:
            return
        size = min(self.capacity, max(n_positions, 2 * old, _MIN_CACHE_POSITIONS))
        for store in (self.k, self.v):
            grown = self._ctx.empty(size * self.row_bytes)
            if old:
                rec.copy(store[layer], grown, old * self.row_bytes)
            store[layer] = grown
        self.allocated[layer] = size


@dataclass
class _Segment:
    """One sequence's rows in a step's activations: its cache, position, first row, row count."""

    cache: WgpuKVCache
    pos: int
    first: int
    n: int


@dataclass
class _Layer:
    """One transformer block's weights on the GPU (names mirror the GGUF tensors)."""

    attn_norm: Any
    attn_q: kernels.GPUWeight
    attn_k: kernels.GPUWeight
    attn_v: kernels.GPUWeight
    attn_output: kernels.GPUWeight
    ffn_norm: Any
    ffn_gate: kernels.GPUWeight
    ffn_up: kernels.GPUWeight
    ffn_down: kernels.GPUWeight
    attn_q_norm: Any = None
    attn_k_norm: Any = None
    post_attention_norm: Any = None
    post_ffw_norm: Any = None


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
        self.h = empty(n_tokens * cfg.n_embd * 4)  # (n, n_embd): normed input of a projection
        self.a = empty(n_tokens * cfg.n_embd * 4)  # (n, n_embd): attention / FFN output projection
        self.q_raw = empty(n_tokens * cfg.q_dim * 4)  # (n, n_head, head_dim)
        self.q = empty(n_tokens * cfg.q_dim * 4)
        self.k_raw = empty(n_tokens * cfg.kv_dim * 4)  # (n, n_head_kv, head_dim)
        self.v_raw = empty(n_tokens * cfg.kv_dim * 4)
        self.attn = empty(n_tokens * cfg.q_dim * 4)  # (n, n_head, head_dim)
        self.gate = empty(n_tokens * cfg.n_ff * 4)  # (n, n_ff)
        self.up = empty(n_tokens * cfg.n_ff * 4)
        self.f = empty(n_tokens * cfg.n_ff * 4)
        self.rounded = empty(n_tokens * max(cfg.n_embd, cfg.q_dim, cfg.n_ff) * 4)  # a matmul input as f16/bf16
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
        names = list(config.expected_tensors())
        uploaded: dict[str, Any] = {}
        for done, name in enumerate(names, 1):
            uploaded[name] = self._upload(tensors[name])
            if progress:
                progress(done / len(names))
        self.token_embd: kernels.GPUWeight = uploaded["token_embd.weight"]
        self.output: kernels.GPUWeight = self.token_embd if config.tied_output else uploaded["output.weight"]
        self.output_norm = uploaded["output_norm.weight"]
        self.rope_freqs = uploaded.get("rope_freqs.weight")
        self.layers = [
            _Layer(**{field: uploaded[f"blk.{i}.{field}.weight"] for field in _Layer.__dataclass_fields__
                      if f"blk.{i}.{field}.weight" in uploaded})
            for i in range(config.n_layers)
        ]
        self._scratch = _Scratch(self.ctx, config)
        self._rec: Recorder | None = None
        self.dispatches_submitted = 0  # every dispatch ever submitted (what a step cost, for tests and traces)
        self._lock = threading.RLock()  # one encoder: concurrent callers record one at a time

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

    def new_cache(self, capacity: int) -> WgpuKVCache:
        # Positions past a truncation are overwritten by the next step before attention reads them.
        return WgpuKVCache(self.kv_pool or self.configure_kv(), self.ctx, self.config, capacity, self.kv_f16)

    def _step(self, items: Sequence[StepItem], n_layers: int) -> list[np.ndarray | None]:
        """All items' rows in one activation buffer: norms, matmuls and the FFN over every row at once,
        rope and attention per item over its own cache; one encoder, one submit, one read-back."""
        cfg = self.config
        if any(item.lora is not None for item in items):
            raise BackendError("LoRA adapters are not applied on the wgpu backend yet: use --backend cpu or numpy")
        with self._lock:
            if self._rec is not None:  # a caller of the per-sequence API left work pending: not this step's
                self._submit()
            x = self.embed(np.concatenate([item.tokens for item in items]))
            segments, first = [], 0
            for item in items:
                segments.append(_Segment(item.cache, item.pos, first, len(item.tokens)))
                first += len(item.tokens)
            for index in range(n_layers):
                self._block(index, x, segments)
            picks = [wanted_rows(item, seg.first) for item, seg in zip(items, segments, strict=True)]
            logits = self._logit_rows([(x, int(row)) for pick in picks for row in pick])
        assert logits.shape[1] == cfg.n_vocab
        return split_logits(items, picks, logits)

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
        assert isinstance(cache, WgpuKVCache) and isinstance(x, GPUActivations)
        self._block(index, x, [_Segment(cache, pos, 0, x.n_tokens)])
        return x

    def _block(self, index: int, x: GPUActivations, segments: list[_Segment]) -> None:
        with self._lock:
            rec = self._recorder()
            self._scratch.ensure(x.n_tokens)
            for seg in segments:
                seg.cache.grow(rec, index, seg.pos + seg.n)
            self._attention_block(rec, index, x, segments)
            self._ffn_block(rec, index, x)

    def logits(self, x: GPUActivations, last_only: bool = True) -> np.ndarray:
        first = x.n_tokens - 1 if last_only else 0
        with self._lock:
            return self._logit_rows([(x, row) for row in range(first, x.n_tokens)])

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
            self._project(rec, normed, [(self.output, logits)], len(batch))
            self._submit()
            out[start : start + len(batch)] = self.ctx.read(logits, np.float32, (len(batch), cfg.n_vocab))
        return out

    def weight_bytes_per_token(self) -> int:
        matrices = [w for layer in self.layers for w in vars(layer).values() if isinstance(w, kernels.GPUWeight)]
        return sum(w.nbytes for w in matrices) + self.output.nbytes

    # ---- the two halves of a block -------------------------------------------------------------

    def _attention_block(self, rec: Recorder, index: int, x: GPUActivations, segments: list[_Segment]) -> None:
        cfg, w, s, n = self.config, self.layers[index], self._scratch, x.n_tokens
        ops.rms_norm(rec, x.buffer, w.attn_norm, s.h, n, cfg.n_embd, cfg.norm_eps)
        self._project(rec, s.h, [(w.attn_q, s.q_raw), (w.attn_k, s.k_raw), (w.attn_v, s.v_raw)], n)
        for seg in segments:  # rope and attention per sequence: its positions, its cache
            cache = seg.cache
            rope = dict(pos=seg.pos, base=cfg.layer_rope_base(index), neox=cfg.rope_layout == "neox",
                        eps=cfg.norm_eps, factors=self.rope_freqs)
            q_at, kv_at = seg.first * cfg.q_dim, seg.first * cfg.kv_dim  # the segment's rows, in elements
            ops.rope(rec, s.q_raw, s.q, seg.n, cfg.n_head, cfg.head_dim, norm_weight=w.attn_q_norm,
                     src_offset=q_at, dst_offset=q_at, **rope)
            row = seg.pos * cache.row_elements  # where position `pos` starts in the cache, in elements
            ops.rope(rec, s.k_raw, cache.k[index], seg.n, cfg.n_head_kv, cfg.head_dim, norm_weight=w.attn_k_norm,
                     out_f16=cache.f16, src_offset=kv_at, dst_offset=row, **rope)
            ops.rope(rec, s.v_raw, cache.v[index], seg.n, cfg.n_head_kv, cfg.head_dim, rotate=False,
                     out_f16=cache.f16, src_offset=kv_at, dst_offset=row, **rope)
            ops.attention(rec, self._rows(rec, s.q, seg, cfg.q_dim), cache.k[index], cache.v[index],
                          self._rows(rec, s.attn, seg, cfg.q_dim), seg.n, cfg.n_head, cfg.n_head_kv,
                          cfg.head_dim, seg.pos, cfg.layer_window(index), cfg.attention_scale, kv_f16=cache.f16)
        self._project(rec, s.attn, [(w.attn_output, s.a)], n)
        self._residual(rec, x, s.a, w.post_attention_norm)

    def _rows(self, rec: Recorder, buffer: Any, seg: _Segment, width: int) -> Any:
        """A binding of the segment's rows of a (rows, width) f32 buffer (the whole buffer for row 0)."""
        if seg.first == 0:
            return buffer
        offset = seg.first * width * 4
        if offset % self.ctx.storage_offset_alignment:
            raise UnsupportedError(f"a row width of {width} floats cannot be bound at row offsets on this GPU")
        return (buffer, offset, seg.n * width * 4)

    def _ffn_block(self, rec: Recorder, index: int, x: GPUActivations) -> None:
        cfg, w, s, n = self.config, self.layers[index], self._scratch, x.n_tokens
        ops.rms_norm(rec, x.buffer, w.ffn_norm, s.h, n, cfg.n_embd, cfg.norm_eps)
        self._project(rec, s.h, [(w.ffn_gate, s.gate), (w.ffn_up, s.up)], n)
        ops.gated(rec, s.f, s.gate, s.up, n * cfg.n_ff, cfg.ffn_activation)
        self._project(rec, s.f, [(w.ffn_down, s.a)], n)
        self._residual(rec, x, s.a, w.post_ffw_norm)

    def _project(self, rec: Recorder, x: Any, projections: list[tuple[kernels.GPUWeight, Any]], n: int) -> None:
        """out = W x for each (W, out) sharing the input x, which F16/BF16 weights see rounded."""
        held = None  # the rounding scratch.rounded currently holds x in
        for weight, out in projections:
            kind = _INPUT_ROUNDING.get(weight.fmt.name)
            if kind is not None and kind != held:
                ops.round_to(rec, self._scratch.rounded, x, n * weight.n_cols, kind)
                held = kind
            kernels.matmul(rec, weight, x if kind is None else self._scratch.rounded, out, n)

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
