"""The ctypes binding of the kernel library: each C entry point's signature, and `Kernels`, whose
methods check shapes and types before a call so that a bad call is a BackendError, never a crash.

ctypes releases the GIL for the duration of each call; the thread pool lives inside the library.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from host_functions.errors import BackendError
from host_functions.native.variants import Variant

_PTR = ctypes.c_void_p
_I64 = ctypes.c_int64
# Bound once: _address runs a few hundred times a decode step. Typed as taking Any because NumPy's
# stubs do not declare the buffer protocol that ndarray implements.
_char_from_buffer: Callable[[Any], ctypes.c_char] = ctypes.c_char.from_buffer
_addressof = ctypes.addressof


def _address(a: np.ndarray) -> int:
    """The address of a's data. Through the buffer protocol it costs less than `a.ctypes.data` (which
    builds a helper object per call), and a decode step takes a few hundred addresses; arrays that
    protocol refuses (read-only, not contiguous, empty) take the general way."""
    try:
        return _addressof(_char_from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


MAX_SEGMENTS = 8  # matmul.c's limit on the weights of one fused call


class _Segment(ctypes.Structure):
    """matmul.c's realm_segment: one weight of a fused projection."""

    _fields_ = [("type", ctypes.c_int32), ("reserved", ctypes.c_int32), ("w", ctypes.c_void_p),
                ("w_stride", ctypes.c_int64), ("n_rows", ctypes.c_int64)]


class _Product(ctypes.Structure):
    """layer.c's layer_product: one fused product's segments and its output width."""

    _fields_ = [("segs", ctypes.POINTER(_Segment)), ("n_seg", ctypes.c_int64), ("n_out", ctypes.c_int64)]


class NativeLayer(ctypes.Structure):
    """layer.c's layer_weights: a block's products, norms (NULL where absent) and shapes. Build with
    Kernels.native_layer, which keeps the arrays it points into alive as long as the structure."""

    _fields_ = [("qkv", _Product), ("attn_out", _Product), ("gate_up", _Product), ("down", _Product),
                *((name, _PTR) for name in ("attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm",
                                            "post_ffn_norm")),
                *((name, _I64) for name in ("n_embd", "n_ff", "q_col", "k_col", "v_col")),
                *((name, ctypes.c_int32) for name in ("n_head", "n_kv", "head_dim", "neox", "activation",
                                                      "reserved")),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float)]


LAYER_PRODUCTS = ("qkv", "attn_out", "gate_up", "down")
LAYER_NORMS = ("attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm")


def _segments(weights: Sequence[tuple[int, np.ndarray]]) -> ctypes.Array[_Segment]:
    """matmul.c's segment array for (GGML type, (n_rows, row_bytes) uint8) weights; BackendError for
    more than MAX_SEGMENTS or rows that are not a 2-D uint8 array of contiguous rows."""
    if not 0 < len(weights) <= MAX_SEGMENTS:
        raise BackendError(f"matmul: {len(weights)} weights (1..{MAX_SEGMENTS} per call)")
    segments = (_Segment * len(weights))()
    for seg, (qtype, rows) in zip(segments, weights, strict=True):
        if rows.ndim != 2 or rows.dtype != np.uint8 or rows.strides[1] != 1:
            raise BackendError(f"matmul: weight rows must be a 2-D uint8 array, got {rows.shape}/{rows.dtype}")
        seg.type, seg.w, seg.w_stride, seg.n_rows = int(qtype), _address(rows), rows.strides[0], rows.shape[0]
    return segments


class LoraPart(ctypes.Structure):
    """lora.c's realm_lora_part: one part of a fused projection's low-rank term. Build with lora_parts,
    which keeps the B matrices alive as long as the array."""

    _fields_ = [("bt", ctypes.c_void_p), ("out_offset", ctypes.c_int64), ("n_out", ctypes.c_int64),
                ("rank_offset", ctypes.c_int64), ("rank", ctypes.c_int64), ("alpha_over_rank", ctypes.c_double)]


LORA_MAX_RANK = 512  # lora.c's limit on the ranks of one fused projection together


def lora_parts(parts: Sequence[tuple[np.ndarray, int, int, float]]) -> ctypes.Array[LoraPart]:
    """A realm_lora_part array for (B (n_out, rank) float32, output offset, rank offset, alpha / rank)
    per part; the array holds the transposed copies of B that lora.c reads."""
    array = (LoraPart * len(parts))()
    keep = []
    for part, (b, out_offset, rank_offset, alpha_over_rank) in zip(array, parts, strict=True):
        bt = np.ascontiguousarray(np.asarray(b, np.float32).T)  # (rank, n_out)
        keep.append(bt)
        part.bt, part.out_offset, part.n_out = bt.ctypes.data, out_offset, bt.shape[1]
        part.rank_offset, part.rank, part.alpha_over_rank = rank_offset, bt.shape[0], alpha_over_rank
    array._keep = keep  # type: ignore[attr-defined]
    return array


class Kernels:
    """The loaded library: quantized matmuls, attention, LoRA and row-wise ops on a persistent thread pool."""

    def __init__(self, variant: Variant, path: Path) -> None:
        self.variant = variant
        self.path = path
        lib = ctypes.CDLL(str(path))
        if lib.realm_native_abi() != 1:
            raise BackendError(f"{path}: unexpected kernel library ABI")
        lib.realm_matmul.argtypes = [ctypes.POINTER(_Segment), ctypes.c_int, _I64, _PTR, _I64, _PTR, _I64]
        lib.realm_matmul.restype = ctypes.c_int
        lib.realm_quantize_act.argtypes = [ctypes.c_int, _PTR, _I64, _I64, _PTR]
        lib.realm_quantize_act.restype = ctypes.c_int
        lib.realm_act_row_bytes.argtypes = [ctypes.c_int, _I64]
        lib.realm_act_row_bytes.restype = _I64
        lib.realm_attention.argtypes = [_PTR, _I64, ctypes.c_int, ctypes.c_int, ctypes.c_int, _PTR, _PTR, _I64, _PTR,
                                         _I64, _I64, _I64, ctypes.c_float, _PTR]
        lib.realm_attention.restype = ctypes.c_int
        lib.realm_set_threads.argtypes = [ctypes.c_int]
        lib.realm_set_threads.restype = ctypes.c_int
        lib.realm_threads.restype = ctypes.c_int
        lib.realm_lora.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _I64, ctypes.POINTER(LoraPart), ctypes.c_int,
                                   ctypes.c_double, _PTR, _I64]
        lib.realm_lora.restype = ctypes.c_int
        lib.realm_rms_norm.argtypes = [_PTR, _I64, _I64, _PTR, ctypes.c_float, _PTR]
        lib.realm_gated.argtypes = [ctypes.c_int, _PTR, _I64, _I64, _PTR]
        lib.realm_rope.argtypes = [_PTR, _I64, ctypes.c_int, ctypes.c_int, _PTR, _PTR, ctypes.c_int, _PTR]
        lib.realm_kv_store.argtypes = [_PTR, _PTR, _I64, _I64, _PTR, _I64, _PTR, _PTR]
        lib.realm_layer_scratch.argtypes = [ctypes.POINTER(NativeLayer), _I64]
        lib.realm_layer_scratch.restype = _I64
        lib.realm_layer.argtypes = [ctypes.POINTER(NativeLayer), _PTR, _I64, _PTR, ctypes.c_int, _PTR, _I64, _PTR, _PTR,
                                    _I64, _PTR, _PTR, _I64, _PTR, _I64]
        for name in ("realm_rms_norm", "realm_gated", "realm_rope", "realm_kv_store", "realm_layer"):
            getattr(lib, name).restype = ctypes.c_int
        self._lib = lib

    @property
    def threads(self) -> int:
        return int(self._lib.realm_threads())

    def set_threads(self, n: int) -> int:
        """Use n threads (the caller plus n - 1 workers) for every following call; returns the count."""
        return int(self._lib.realm_set_threads(int(n)))

    def matmul(self, weights: Sequence[tuple[int, np.ndarray]], n_cols: int, x: np.ndarray) -> np.ndarray:
        """x @ W.T for W the rows of several weights stacked (a fused projection), in one call.

        weights: (GGML type, (n_rows, row_bytes) uint8 raw GGUF rows) pairs; x: (n_tokens, n_cols)
        float32. Returns (n_tokens, total rows) float32. Raises BackendError for an unsupported type,
        mismatched shapes or more than MAX_SEGMENTS weights.
        """
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != n_cols:
            raise BackendError(f"matmul: x {x.shape} and {len(weights)} weights do not fit {n_cols} columns")
        segments = _segments(weights)
        out = np.empty((x.shape[0], sum(rows.shape[0] for _, rows in weights)), np.float32)
        status = self._lib.realm_matmul(segments, len(weights), n_cols, _address(x), x.shape[0], _address(out),
                                        out.shape[1])
        if status != 0:
            types = ", ".join(str(int(t)) for t, _ in weights)
            raise BackendError(f"matmul: the kernel library refused types {types} with {n_cols} columns "
                               f"(status {status})")
        return out

    def lora(self, y: np.ndarray, x: np.ndarray, rows: slice, a: np.ndarray, parts: ctypes.Array[LoraPart],
             scale: float) -> None:
        """y[rows] += scale * alpha/rank * B (A x[rows]) for each part, in place (lora.c).

        y: (n, n_out) and x: (n, n_in) float32 C-contiguous; a: (sum of the parts' ranks, n_in) float32
        C-contiguous; parts from lora_parts, whose offsets must lie inside y's columns and a's rows.
        Raises BackendError for shapes that do not fit.
        """
        start, stop, _ = rows.indices(x.shape[0])
        ok = (x.dtype == y.dtype == a.dtype == np.float32 and x.flags.c_contiguous and y.flags.c_contiguous
              and a.flags.c_contiguous and x.shape[0] == y.shape[0] and a.shape[1] == x.shape[1]
              and a.shape[0] <= LORA_MAX_RANK
              and all(p.out_offset + p.n_out <= y.shape[1] and p.rank_offset + p.rank <= a.shape[0] for p in parts))
        if not ok:
            raise BackendError(f"lora: x {x.shape}, y {y.shape} and A {a.shape} do not fit")
        if stop <= start:
            return
        status = self._lib.realm_lora(_address(x) + start * x.strides[0], x.shape[1], stop - start, x.shape[1],
                                      _address(a), a.shape[0], parts, len(parts), float(scale),
                                      _address(y) + start * y.strides[0], y.shape[1])
        if status != 0:
            raise BackendError(f"lora: the kernel library refused a rank sum of {a.shape[0]} (status {status})")

    def attention(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos: int, start: int, window: int,
                  scale: float, slots: np.ndarray | None = None) -> np.ndarray:
        """Causal GQA of queries q (n, n_head, head_dim) at positions pos.. over the keys/values of
        positions start..pos+n-1, as NumpyBackend's `attention` rounds it (f16 query and probabilities);
        window > 0 limits position p to keys p-window+1..p. keys/values: (L, n_kv, head_dim) holding
        those positions in order, or with `slots` (pos+n-start,) int64 the KV pool (n_slots, n_kv,
        head_dim) and each position's row in it, read in place. Returns (n, n_head, head_dim) float32.
        Raises BackendError for inconsistent shapes or a slot outside the pool."""
        q = np.ascontiguousarray(q, np.float32)
        keys, values = np.ascontiguousarray(keys, np.float32), np.ascontiguousarray(values, np.float32)
        n, n_head, hd = q.shape
        n_keys = pos + n - start
        if slots is not None:
            slots = np.ascontiguousarray(slots, np.int64)
        if (keys.shape != values.shape or keys.ndim != 3 or keys.shape[2] != hd
                or (keys.shape[0] != n_keys if slots is None else slots.shape != (n_keys,))):
            raise BackendError(f"attention: keys {keys.shape} / values {values.shape} do not fit queries {q.shape} "
                               f"at {pos} from {start}")
        out = np.empty_like(q)
        status = self._lib.realm_attention(_address(q), n, n_head, keys.shape[1], hd, _address(keys), _address(values),
                                           keys.shape[0], None if slots is None else _address(slots), pos, start,
                                           window, scale, _address(out))
        if status != 0:
            raise BackendError(f"attention: the kernel library refused the call (status {status})")
        return out

    def store_kv(self, k_pool: np.ndarray, v_pool: np.ndarray, slots: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """k_pool[slots], v_pool[slots] = k, v rounded to float16 (as NumPy rounds), in place: pools
        (n_slots, n_kv, head_dim) float32 C-contiguous, k/v (n, n_kv, head_dim), slots (n,) int64.
        Raises BackendError for shapes that do not fit or a slot outside the pool (nothing written)."""
        k, v = np.ascontiguousarray(k, np.float32), np.ascontiguousarray(v, np.float32)
        slots = np.ascontiguousarray(slots, np.int64)
        ok = (k_pool.shape == v_pool.shape and k_pool.dtype == v_pool.dtype == np.float32 and k_pool.flags.c_contiguous
              and v_pool.flags.c_contiguous and k.shape == v.shape == (slots.shape[0], *k_pool.shape[1:]))
        if not ok:
            raise BackendError(f"store_kv: k {k.shape} / v {v.shape} at {slots.shape} slots do not fit pools "
                               f"{k_pool.shape} / {v_pool.shape}")
        status = self._lib.realm_kv_store(_address(k_pool), _address(v_pool), k_pool.shape[0],
                                          math.prod(k_pool.shape[1:]), _address(slots), slots.shape[0], _address(k),
                                          _address(v))
        if status != 0:
            raise BackendError(f"store_kv: a slot outside the pool of {k_pool.shape[0]} (status {status})")

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """x / rms(x) * weight over the last axis, as llama.cpp computes it (norm.c): a new float32
        array of x's shape. Raises BackendError when weight is not a float32 vector of x's last size."""
        x = np.ascontiguousarray(x, np.float32)
        n_cols = x.shape[-1]
        if n_cols < 1 or weight.shape != (n_cols,) or weight.dtype != np.float32 or not weight.flags.c_contiguous:
            raise BackendError(f"rms_norm: weight {weight.shape}/{weight.dtype} does not fit rows of {n_cols}")
        out = np.empty_like(x)
        _check(self._lib.realm_rms_norm(_address(x), x.size // n_cols, n_cols, _address(weight), eps, _address(out)),
               "rms_norm")
        return out

    def gated(self, gate_up: np.ndarray, activation: str) -> np.ndarray:
        """act(gate) * up over the fused (n, 2 n_ff) gate|up output, act "silu" or "gelu" (GELU-tanh):
        (n, n_ff) float32 (activation.c). Raises BackendError for an odd width or another activation."""
        gate_up = np.ascontiguousarray(gate_up, np.float32)
        kind = GATED_KINDS.get(activation)
        if kind is None or gate_up.ndim != 2 or gate_up.shape[1] % 2 or gate_up.shape[1] == 0:
            raise BackendError(f"gated: {activation!r} over {gate_up.shape} (want silu or gelu over (n, 2 n_ff))")
        n_ff = gate_up.shape[1] // 2
        out = np.empty((gate_up.shape[0], n_ff), np.float32)
        _check(self._lib.realm_gated(kind, _address(gate_up), gate_up.shape[0], n_ff, _address(out)), "gated")
        return out

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
        """x (n, n_head, head_dim) rotated by per-token angles given as cos/sin (n, 1, head_dim/2) float32,
        in the "neox" (halves) or interleaved (pairs) layout: NumpyBackend's rope, bit for bit (rope.c).
        Raises BackendError for shapes that do not fit."""
        x = np.ascontiguousarray(x, np.float32)
        cos, sin = np.ascontiguousarray(cos, np.float32), np.ascontiguousarray(sin, np.float32)
        n, n_head, hd = x.shape
        if layout not in ("neox", "interleaved"):
            raise BackendError(f"rope: layout {layout!r} (want neox or interleaved)")
        if hd % 2 or cos.shape != sin.shape or cos.size != n * (hd // 2):
            raise BackendError(f"rope: x {x.shape} and angles {cos.shape}/{sin.shape} do not fit")
        out = np.empty_like(x)
        _check(self._lib.realm_rope(_address(x), n, n_head, hd, _address(cos), _address(sin), layout == "neox",
                                    _address(out)), "rope")
        return out

    def native_layer(self, products: dict[str, tuple[Sequence[tuple[int, np.ndarray]], int]],
                     norms: dict[str, np.ndarray | None], shape: dict[str, int], eps: float,
                     scale: float) -> NativeLayer:
        """layer.c's description of one block: products[name] = (weights, n_out) for each of LAYER_PRODUCTS,
        norms[name] a float32 vector or None for each of LAYER_NORMS, shape the int fields (n_embd, n_ff,
        q_col, k_col, v_col, n_head, n_kv, head_dim, neox, activation). Raises BackendError for weights
        matmul would refuse or a norm that is not a contiguous float32 vector."""
        layer, keep = NativeLayer(), list[object]()  # keep: the arrays the structure points into
        for name in LAYER_PRODUCTS:
            weights, n_out = products[name]
            segments = _segments(weights)
            keep.append(segments)
            setattr(layer, name, _Product(segments, len(weights), n_out))
        for name in LAYER_NORMS:
            vector = norms[name]
            if vector is not None and (vector.dtype != np.float32 or vector.ndim != 1 or not vector.flags.c_contiguous):
                raise BackendError(f"native layer: norm {name} {vector.shape}/{vector.dtype} is no float32 vector")
            setattr(layer, name, None if vector is None else _address(vector))
            keep.append(vector)
        for name, value in shape.items():
            setattr(layer, name, value)
        layer.eps, layer.scale = eps, scale
        layer._keep = keep
        return layer

    def layer(self, layer: NativeLayer, x: np.ndarray, spans: np.ndarray, slots: np.ndarray, k_pool: np.ndarray,
              v_pool: np.ndarray, cos: np.ndarray, sin: np.ndarray, window: int) -> None:
        """One block over x (n, n_embd) float32 C-contiguous, in place (layer.c): spans (s, 4) int64 rows of
        (first row, rows, position, offset in slots), slots int64 (the pool slot of each span's positions
        0..position+rows-1 from its offset), the layer's pools (n_slots, n_kv, head_dim) float32, cos/sin
        (n, 1, head_dim/2) float32 for its rope base, window 0 or its sliding window. Raises BackendError
        for shapes that do not fit or a slot outside the pool (nothing written then)."""
        n = x.shape[0]
        spans, slots = np.ascontiguousarray(spans, np.int64), np.ascontiguousarray(slots, np.int64)
        cos, sin = np.ascontiguousarray(cos, np.float32), np.ascontiguousarray(sin, np.float32)
        ok = (x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (n, layer.n_embd)
              and spans.ndim == 2 and spans.shape[1] == 4 and slots.ndim == 1
              and k_pool.shape == v_pool.shape and k_pool.shape[1:] == (layer.n_kv, layer.head_dim)
              and k_pool.dtype == v_pool.dtype == np.float32 and k_pool.flags.c_contiguous and v_pool.flags.c_contiguous
              and cos.shape == sin.shape and cos.size == n * (layer.head_dim // 2))
        if not ok:
            raise BackendError(f"layer: x {x.shape}, spans {spans.shape}, pools {k_pool.shape} and angles {cos.shape} "
                               "do not fit the layer")
        scratch = np.empty(int(self._lib.realm_layer_scratch(ctypes.byref(layer), n)), np.float32)
        status = self._lib.realm_layer(ctypes.byref(layer), _address(x), n, _address(spans), spans.shape[0],
                                       _address(slots), slots.shape[0], _address(k_pool), _address(v_pool),
                                       k_pool.shape[0], _address(cos), _address(sin), window, _address(scratch),
                                       scratch.size)
        _check(status, "layer")

    def quantize_activations(self, qtype: int, x: np.ndarray) -> np.ndarray:
        """x (n_tokens, n_cols) encoded as the activation type paired with weight type `qtype`:
        (n_tokens, row_bytes) uint8. Raises BackendError for an unsupported type or width."""
        x = np.ascontiguousarray(x, np.float32)
        row_bytes = int(self._lib.realm_act_row_bytes(int(qtype), x.shape[1]))
        if row_bytes < 0:
            raise BackendError(f"no activation encoding for type {int(qtype)} with {x.shape[1]} columns")
        out = np.empty((x.shape[0], row_bytes), np.uint8)
        self._lib.realm_quantize_act(int(qtype), _address(x), x.shape[0], x.shape[1], _address(out))
        return out


GATED_KINDS = {"silu": 0, "gelu": 1}  # activation.c's GATE_* kinds, by the config's activation name


def _check(status: int, op: str) -> None:
    """A row-wise op's status: its wrapper checks the shapes first, so a refusal is a second line."""
    if status != 0:
        raise BackendError(f"{op}: the kernel library refused the call (status {status})")
