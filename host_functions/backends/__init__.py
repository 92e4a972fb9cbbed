"""Compute backends: the forward pass of one transformer, step by step.

A backend owns the model's weights in its own form (NumPy: dequantized float32 arrays; wgpu: the
quantized GGUF bytes resident on the GPU) and per-sequence KV caches. Activations stay inside the
backend: callers hold an opaque `Activations` value between calls, so a whole step can stay on the
device and only logits come back.

One step over a sequence's pending tokens is:
    x = backend.embed(tokens)                       # (n_tokens, n_embd), backend-resident
    for i in range(n_layers): x = backend.layer(i, x, cache, pos)   # writes K/V at pos..pos+n-1
    logits = backend.logits(x, last_only=True)       # NumPy float32, (1 or n_tokens, n_vocab)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..config import ModelConfig
from ..gguf_file import RawTensor

Activations = Any  # backend-specific handle to hidden states of shape (n_tokens, n_embd)


class KVCache(ABC):
    """Keys and values of one sequence, for every layer, up to `capacity` positions."""

    capacity: int

    @abstractmethod
    def truncate(self, length: int) -> None:
        """Forget positions >= length (speculative decoding rolls back rejected tokens)."""


class Backend(ABC):
    """The forward pass of one model on one kind of hardware; shared by every sequence."""

    name: ClassVar[str]

    def __init__(self, config: ModelConfig, tensors: Mapping[str, RawTensor]) -> None:
        self.config = config

    @abstractmethod
    def new_cache(self, capacity: int) -> KVCache:
        """A KV cache for one sequence of at most `capacity` tokens."""

    @abstractmethod
    def embed(self, tokens: np.ndarray) -> Activations:
        """Embedding rows (scaled by config.embedding_scale) for int32 token ids."""

    @abstractmethod
    def layer(self, index: int, x: Activations, cache: KVCache, pos: int) -> Activations:
        """Run transformer block `index` on x, the tokens at positions pos..pos+n-1 of the sequence.

        Stores their keys/values in `cache` and attends causally (and within the layer's sliding
        window) over the cache's positions 0..pos+n-1.
        """

    @abstractmethod
    def logits(self, x: Activations, last_only: bool = True) -> np.ndarray:
        """Final norm and output projection: float32 (1 or n_tokens, n_vocab)."""

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights a decode step reads (for bandwidth figures)."""
        return 0
