"""The cpu backend: NumpyBackend's forward pass with the weights kept as their GGUF blocks.

Every projection runs on the native kernels (`host_functions.native`), which read ggml's block layouts
straight from the memory-mapped file and quantize the activations to the type llama.cpp pairs with
each format, so resident memory is about the file size plus the KV cache, and a decode step reads the
quantized bytes (~246 MB for the default model) instead of their float32 expansion.

Weights that share an input (Q|K|V, gate|up) are one fused kernel call over several weights: the
activation rows are quantized once per activation type and the threads split the rows of all of
them, without copying the weights into a concatenated matrix (the default model stores V as Q8_0
next to Q5_0 Q and K, which a concatenation could not join anyway). The embedding gather decodes only
the looked-up rows of the quantized table. Norms, RoPE, attention and the KV cache are NumpyBackend's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np

from .. import native
from ..config import ModelConfig
from ..gguf_file import RawTensor
from ..quants import quant_format, row_bytes
from .numpy_backend import NumpyBackend


def _rows(raw: RawTensor) -> np.ndarray:
    """A 2-D weight's bytes as (n_rows, row_bytes) uint8, a view of the memory-mapped file."""
    n_rows, n_cols = raw.shape
    return raw.raw_bytes().reshape(n_rows, row_bytes(raw.qtype, n_cols, raw.name))


class QuantizedProjection:
    """y = x @ W.T over the stacked rows of one or more GGUF weights with the same input width."""

    def __init__(self, kernels: native.Kernels, raws: list[RawTensor]) -> None:
        n_cols = {raw.shape[1] for raw in raws}
        assert len(n_cols) == 1, f"fused weights differ in width: {[raw.shape for raw in raws]}"
        self.n_cols = n_cols.pop()
        self._kernels = kernels
        self._weights = [(int(raw.qtype), _rows(raw)) for raw in raws]  # (GGML type, (n_rows, row_bytes))
        self.n_out = sum(rows.shape[0] for _, rows in self._weights)

    @property
    def nbytes(self) -> int:
        return sum(rows.nbytes for _, rows in self._weights)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, n_cols) float32 -> (n, n_out) float32."""
        return self._kernels.matmul(self._weights, self.n_cols, x)


class QuantizedEmbedding:
    """Embedding rows decoded from the quantized table, only for the tokens looked up."""

    def __init__(self, raw: RawTensor) -> None:
        self._fmt = quant_format(raw.qtype, raw.name)
        self._rows = _rows(raw)  # (n_vocab, row_bytes)
        self.n_embd = raw.shape[1]

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """(n,) int64 ids -> (n, n_embd) float32 rows (unscaled), bit-identical to dequantize()."""
        blocks = self._rows[tokens].reshape(-1, self._fmt.type_size)
        return self._fmt.dequantize_blocks(blocks).reshape(len(tokens), self.n_embd)


class CpuBackend(NumpyBackend):
    """Native quantized matmuls on a persistent thread pool; everything else as NumpyBackend.

    Raises BackendError when the kernels cannot be built or loaded (no ziglang, an unsupported
    platform, a REALM_CPU_KERNELS variant this CPU lacks).
    """

    name: ClassVar[str] = "cpu"

    def __init__(self, config: ModelConfig, tensors: Mapping[str, RawTensor],
                 progress: Callable[[float], None] | None = None, threads: int | None = None) -> None:
        self.kernels = native.load(threads)
        super().__init__(config, tensors, progress)

    def _make_projection(self, raws: list[RawTensor]) -> QuantizedProjection:  # type: ignore[override]
        for _ in raws:
            self._loaded()
        return QuantizedProjection(self.kernels, raws)

    def _make_embedding(self, raw: RawTensor) -> QuantizedEmbedding:  # type: ignore[override]
        if not self.config.tied_output:  # a tied table is counted once, as the output projection
            self._loaded()
        return QuantizedEmbedding(raw)
