"""The cpu backend: NumpyBackend's forward pass with the weights kept as their GGUF blocks.

Every projection runs on the native kernels (`host_functions.native`), which read ggml's block layouts
as they are and quantize the activations to the type llama.cpp pairs with each format, so resident
memory is about the file size plus the KV cache, and a decode step reads the quantized bytes instead of
their float32 expansion (docs/cpu_backend.md has the figures).

The weight bytes are copied once, at load, out of the memory-mapped file into anonymous memory, and
the file's pages are released as the copy goes (so the peak holds one chunk twice, not the file).
The copy is what the kernels stream each token: the file's 4 KiB page-cache pages cost a one-token
matmul about a third of its bandwidth (TLB misses, prefetchers stopping at every page), where NumPy's
large allocations get transparent huge pages.

Weights that share an input (Q|K|V, gate|up) are one fused kernel call over several weights: the
activation rows are quantized once per activation type and the threads split the rows of all of
them, without copying the weights into a concatenated matrix (the default model stores V as Q8_0
next to Q5_0 Q and K, which a concatenation could not join anyway). The embedding gather decodes only
the looked-up rows of the quantized table. Attention, RMS norms, RoPE, the gated activations and the
KV writes run natively too (NumpyBackend's hooks: attention with its roundings, reading the keys in
place from the pool; RoPE and the f16-rounded KV writes bit for bit; the norms as llama.cpp sums them;
the activations with the library's own exp); the KV pool itself is NumpyBackend's.

LoRA: the unmerged term of each run of rows is one call of native/lora.c per product; a merged
copy (lora.merged) is a float weight (merged_weight_type) on the same matmul kernels.
"""

from __future__ import annotations

import ctypes
import mmap
import weakref
from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np
from gguf import GGMLQuantizationType

from host_functions import native
from host_functions.arch.config import ModelConfig
from host_functions.backends.numpy_backend import NumpyBackend, RopeAngles, _Span, round_to_bf16
from host_functions.formats.gguf_file import RawTensor
from host_functions.formats.quants import quant_format, row_bytes
from host_functions.kv.pool import KVPool
from host_functions.lora.merged import fused_float_weight
from host_functions.lora.unmerged import FusedPairs, RowAdapter, fused_pairs

_COPY_CHUNK = 16 << 20  # bytes copied between two releases of the file's pages
_FOLIO = 2 << 20  # the largest folio a fault may map (a PMD's worth)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MADV_NOHUGEPAGE = 15  # linux/mman.h (the mmap module lacks it)


def _advise(array: np.ndarray, advice: int) -> None:
    """madvise() the whole pages inside `array`'s memory; a refusal only costs memory, so it is ignored."""
    start = array.ctypes.data
    lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    hi = (start + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo:
        _libc.madvise(lo, hi - lo, advice)


def _resident_rows(raw: RawTensor) -> np.ndarray:
    """A 2-D weight's bytes as (n_rows, row_bytes) uint8, copied out of the memory-mapped file, whose
    pages are dropped from this process as they are copied (the page cache keeps them)."""
    n_rows, n_cols = raw.shape
    src = raw.raw_bytes()
    dst = np.empty(src.shape, np.uint8)
    for start in range(0, src.size, _COPY_CHUNK):
        dst[start : start + _COPY_CHUNK] = src[start : start + _COPY_CHUNK]
        _advise(src[start : start + _COPY_CHUNK], mmap.MADV_DONTNEED)
    return dst.reshape(n_rows, row_bytes(raw.qtype, n_cols, raw.name))


def _with_neighbours(view: np.ndarray) -> np.ndarray:
    """`view` of a memory-mapped file widened to _FOLIO boundaries, within the file's mapping: a fault in
    a file the page cache holds in large folios maps the whole folio, neighbours included."""
    mapping = view
    while isinstance(mapping.base, np.ndarray):
        mapping = mapping.base
    base, start = mapping.ctypes.data, view.ctypes.data - mapping.ctypes.data
    lo = max(0, (base + start) // _FOLIO * _FOLIO - base)
    hi = min(mapping.nbytes, -(-(base + start + view.nbytes) // _FOLIO) * _FOLIO - base)
    return mapping.reshape(-1).view(np.uint8)[lo:hi]


class QuantizedProjection:
    """y = x @ W.T over the stacked rows of one or more weights (GGML type, (n_rows, row_bytes) uint8)
    with the same input width."""

    def __init__(self, kernels: native.Kernels, weights: list[tuple[int, np.ndarray]], n_cols: int) -> None:
        self.n_cols = n_cols
        self._kernels = kernels
        self._weights = weights  # (GGML type, (n_rows, row_bytes) uint8)
        self.n_out = sum(rows.shape[0] for _, rows in self._weights)

    @property
    def nbytes(self) -> int:
        return sum(rows.nbytes for _, rows in self._weights)

    @property
    def weights(self) -> list[tuple[int, np.ndarray]]:
        """(GGML type, (n_rows, row_bytes) uint8) of each stacked weight, in column order."""
        return self._weights

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, n_cols) float32 -> (n, n_out) float32."""
        return self._kernels.matmul(self._weights, self.n_cols, x)


class QuantizedEmbedding:
    """Embedding rows decoded from the quantized table, only for the tokens looked up."""

    def __init__(self, raw: RawTensor, rows: np.ndarray) -> None:
        self._fmt = quant_format(raw.qtype, raw.name)
        self._rows = rows  # (n_vocab, row_bytes)
        self.n_embd = raw.shape[1]

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """(n,) int64 ids -> (n, n_embd) float32 rows (unscaled), bit-identical to dequantize()."""
        blocks = self._rows[tokens].reshape(-1, self._fmt.type_size)
        return self._fmt.dequantize_blocks(blocks).reshape(len(tokens), self.n_embd)


_T = GGMLQuantizationType
_FLOAT_BYTES = {_T.F32: 4, _T.F16: 2, _T.BF16: 2}
_FLOAT_ENCODE = {  # float32 (n, k) -> the type's values, C-contiguous
    _T.F32: lambda w: np.ascontiguousarray(w, np.float32),
    _T.F16: lambda w: np.ascontiguousarray(w.astype(np.float16)),
    _T.BF16: lambda w: np.ascontiguousarray((round_to_bf16(w).view(np.uint32) >> 16).astype(np.uint16)),
}


_native_forms: weakref.WeakKeyDictionary[FusedPairs, ctypes.Array[native.LoraPart]] = weakref.WeakKeyDictionary()


def _native_parts(fused: FusedPairs) -> ctypes.Array[native.LoraPart]:
    """lora.c's part table of a fused adapter projection, built once and dropped with it."""
    parts = _native_forms.get(fused)
    if parts is None:
        parts = _native_forms[fused] = native.lora_parts(
            [(p.b, p.out.start, p.rank.start, p.alpha_over_rank) for p in fused.parts])
    return parts


def merged_weight_type(base_types: list[GGMLQuantizationType]) -> GGMLQuantizationType:
    """The float type a merged copy of a product takes on the cpu backend: F32 over F32 weights,
    BF16 over BF16, else F16 (over quantized weights F16 is far finer than the base and reads half
    F32's bytes per decoded token).

    Not Q8_0, though a Q8_0 copy (half F16's bytes) decodes faster: requantizing W + s B A adds a
    rounding on top of the base's, which pushes the tiny llama Q4_K fixture's logits out of llama.cpp's
    tolerance (docs/lora.md has the figures).
    """
    kinds = set(base_types)
    if kinds == {_T.F32}:
        return _T.F32
    return _T.BF16 if kinds == {_T.BF16} else _T.F16


# The architectures whose block layer.c computes in full (the llama-style block: optional Q/K norms and
# sandwich norms); another architecture's blocks run NumpyBackend's _layer on the same kernels.
NATIVE_LAYER_ARCHITECTURES = frozenset({"llama", "gemma3"})
_LAYER_PRODUCTS = {"qkv": "qkv", "attn_out": "attn_output", "gate_up": "gate_up", "down": "ffn_down"}
_LAYER_NORMS = {"attn_norm": "attn_norm", "q_norm": "attn_q_norm", "k_norm": "attn_k_norm",
                "post_attn_norm": "post_attention_norm", "ffn_norm": "ffn_norm", "post_ffn_norm": "post_ffw_norm"}


def _span_table(spans: list[_Span]) -> tuple[np.ndarray, np.ndarray]:
    """layer.c's span rows (first row, rows, position, offset in slots) and the spans' key slots end to end."""
    offsets = np.cumsum([0] + [sp.key_slots.shape[0] for sp in spans[:-1]])
    rows = np.array([(sp.rows.start, sp.rows.stop - sp.rows.start, sp.pos, int(off))
                     for sp, off in zip(spans, offsets, strict=True)], np.int64)
    slots = spans[0].key_slots if len(spans) == 1 else np.concatenate([sp.key_slots for sp in spans])
    return rows, slots


class CpuBackend(NumpyBackend):
    """Native quantized matmuls on a persistent thread pool; everything else as NumpyBackend.

    Raises BackendError when the kernels cannot be built or loaded (no ziglang, an unsupported
    platform, a REALM_CPU_KERNELS variant this CPU lacks).
    """

    name: ClassVar[str] = "cpu"

    def __init__(self, config: ModelConfig, tensors: Mapping[str, RawTensor],
                 progress: Callable[[float], None] | None = None, threads: int | None = None) -> None:
        self.kernels = native.load(threads)
        self._resident: dict[str, np.ndarray] = {}  # name -> copied rows, so a tied table is copied once
        self._native_layers: list[native.NativeLayer | None] | None = None  # layer.c's blocks, on first use
        # False: every block runs NumpyBackend's _layer over the hooks, op by op (the same bits; the
        # reference the tests hold layer.c to)
        self.native_blocks = True
        super().__init__(config, tensors, progress)
        self._resident.clear()

    def _vector(self, name: str) -> np.ndarray:
        """NumpyBackend's float32 copy of a norm vector, the file's pages it mapped dropped at once:
        where the page cache holds the file in large folios, reading a few KiB maps 2 MiB."""
        vector = super()._vector(name)
        _advise(_with_neighbours(self.tensors[name].raw_bytes()), mmap.MADV_DONTNEED)
        return vector

    def _weight_rows(self, raw: RawTensor) -> np.ndarray:
        if raw.name not in self._resident:
            self._resident[raw.name] = _resident_rows(raw)
        return self._resident[raw.name]

    def _make_projection(self, raws: list[RawTensor]) -> QuantizedProjection:  # type: ignore[override]
        n_cols = {raw.shape[1] for raw in raws}
        assert len(n_cols) == 1, f"fused weights differ in width: {[raw.shape for raw in raws]}"
        weights = [(int(raw.qtype), self._weight_rows(raw)) for raw in raws]
        for _ in raws:
            self._loaded()
        return QuantizedProjection(self.kernels, weights, n_cols.pop())

    # --- unmerged LoRA: lora.c's shrink and expand per run of rows ---

    def apply_lora(self, y: np.ndarray, x: np.ndarray, layer: int, key: str, runs: list[RowAdapter]) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        for run in runs:
            fused = fused_pairs(run.adapter, layer, key, self.config)
            if fused is not None:
                self.kernels.lora(y, x, slice(run.start, run.end), fused.a, _native_parts(fused), run.scale)
        return y

    # --- merged LoRA: the merged weight in the float type merged_weight_type picks, on the same kernels ---

    def float_weight(self, layer: int, key: str) -> np.ndarray:
        return fused_float_weight(self.projection_tensors(layer, key))

    def merged_nbytes(self, layer: int, key: str) -> int:
        raws = self.projection_tensors(layer, key)
        qtype = merged_weight_type([raw.qtype for raw in raws])
        return sum(raw.shape[0] for raw in raws) * raws[0].shape[1] * _FLOAT_BYTES[qtype]

    def merged_projection(self, layer: int, key: str, weight: np.ndarray) -> QuantizedProjection:  # type: ignore[override]
        qtype = merged_weight_type([raw.qtype for raw in self.projection_tensors(layer, key)])
        rows = _FLOAT_ENCODE[qtype](weight).view(np.uint8)  # (n_out, n_in * bytes per value)
        return QuantizedProjection(self.kernels, [(int(qtype), rows)], weight.shape[1])

    def _make_embedding(self, raw: RawTensor) -> QuantizedEmbedding:  # type: ignore[override]
        if not self.config.tied_output:  # a tied table is counted once, as the output projection
            self._loaded()
        return QuantizedEmbedding(raw, self._weight_rows(raw))

    # --- NumpyBackend's hooks, natively: one library call each instead of several NumPy passes ---

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """llama.cpp's rms_norm arithmetic (squares summed in double) in norm.c."""
        return self.kernels.rms_norm(x, weight, eps)

    def ffn_activation(self, gate_up: np.ndarray) -> np.ndarray:
        """GELU-tanh or SiLU of the gate times up, in activation.c."""
        return self.kernels.gated(gate_up, self.config.ffn_activation)

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
        """NumpyBackend's rope, bit for bit, in rope.c."""
        return self.kernels.rope(x, cos, sin, layout)

    def store_kv(self, k_pool: np.ndarray, v_pool: np.ndarray, slots: np.ndarray, k: np.ndarray,
                 v: np.ndarray) -> None:
        """NumpyBackend's f16-rounded KV writes, bit for bit, in attention.c."""
        self.kernels.store_kv(k_pool, v_pool, slots, k, v)

    def attention(self, q: np.ndarray, k_pool: np.ndarray, v_pool: np.ndarray, slots: np.ndarray, pos: int,
                  start: int, window: int, scale: float) -> np.ndarray:
        """NumpyBackend's attention arithmetic in the native library, the queries over the threads, the
        keys read in place from the pool (no gathered copy of the sequence's keys per layer)."""
        return self.kernels.attention(q, k_pool, v_pool, pos, start, window, scale, slots)

    # --- a whole block in one library call (layer.c), where the step has no adapter terms between ops ---

    def _layer(self, index: int, x: np.ndarray, spans: list[_Span], angles: RopeAngles) -> np.ndarray:
        """NumpyBackend's block in one call of the native library: the same ops in the same order, each
        the entry point the hooks call, so the same bits, without ~16 calls from Python per layer. Steps
        with LoRA (merged or not) and architectures layer.c does not know keep NumpyBackend's path."""
        native_layer = self._native_layer(index) if self.native_blocks else None
        if native_layer is None or any(sp.lora is not None or sp.merged is not None for sp in spans):
            return super()._layer(index, x, spans, angles)
        span_rows, slots = _span_table(spans)
        cfg = self.config
        cos, sin = angles.of_base(cfg.layer_rope_base(index))
        out = np.array(x, np.float32, order="C")  # updated in place; the caller's x stays as it was
        self.kernels.layer(native_layer, out, span_rows, slots, self.kv_k[index], self.kv_v[index], cos, sin,
                           cfg.layer_window(index))
        return out

    def _native_layer(self, index: int) -> native.NativeLayer | None:
        """layer.c's description of block `index`, built on first use; None where the architecture
        has more than layer.c computes (NATIVE_LAYER_ARCHITECTURES) or rope factors."""
        if self._native_layers is None:
            known = self.config.arch in NATIVE_LAYER_ARCHITECTURES and not self.rope_factors
            self._native_layers = [self._describe_layer(i) if known else None for i in range(self.config.n_layers)]
        return self._native_layers[index]

    def _describe_layer(self, index: int) -> native.NativeLayer | None:
        cfg, w = self.config, self.layers[index]
        products = {name: p for name, key in _LAYER_PRODUCTS.items()
                    if isinstance(p := w.projections[key], QuantizedProjection)}
        if len(products) < len(_LAYER_PRODUCTS):
            return None
        columns = self._qkv_columns
        shape = {"n_embd": cfg.n_embd, "n_ff": cfg.n_ff, "q_col": columns["q"].start, "k_col": columns["k"].start,
                 "v_col": columns["v"].start, "n_head": cfg.n_head, "n_kv": cfg.n_head_kv, "head_dim": cfg.head_dim,
                 "neox": int(cfg.rope_layout == "neox"), "activation": native.GATED_KINDS[cfg.ffn_activation]}
        return self.kernels.native_layer(
            {name: (p.weights, p.n_out) for name, p in products.items()},
            {name: w.norms.get(gguf_name) for name, gguf_name in _LAYER_NORMS.items()}, shape, cfg.norm_eps,
            cfg.attention_scale)

    def _allocate_kv(self, pool: KVPool) -> None:
        super()._allocate_kv(pool)
        # NumPy gives large arrays transparent huge pages, and the pool is laid out layer by layer, so
        # a sequence's first token would make each layer's K and V hold a 2 MiB page (docs/cpu_backend.md).
        # Small pages keep the resident cache at about the positions in use.
        _advise(self.kv_k, _MADV_NOHUGEPAGE)
        _advise(self.kv_v, _MADV_NOHUGEPAGE)
