"""A loaded model (shared weights, tokenizer, backend) and the sequences that run on it.

`Model` is what every tenant shares; `Sequence` is one KV cache plus the step in progress. A step is
append -> forward_layer(0..n_layers-1) -> finish, which is exactly what the guest ABI exposes, so a
guest can drive a model layer by layer while the activations never leave the backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence as Seq
from pathlib import Path

import numpy as np

from .errors import BackendError, SequenceError

from .backends import Activations, Backend, KVCache
from .config import ModelConfig
from .gguf_file import GGUFFile
from .sequence_checks import check_appendable, check_next_layer, check_room, check_step_complete, check_token_ids
from .tokenizer import Tokenizer

BACKENDS = ("auto", "numpy", "wgpu")
DEFAULT_SEQUENCE_CAPACITY = 4096


def create_backend(name: str, config: ModelConfig, gguf: GGUFFile,
                   progress: Callable[[float], None] | None = None) -> Backend:
    """Instantiate a backend by name; "auto" picks wgpu on a real GPU adapter, else NumPy."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "auto":
        name = "wgpu" if _real_gpu_available() else "numpy"
    if name == "wgpu":
        from .backends.wgpu_backend import WgpuBackend

        return WgpuBackend(config, gguf.tensors, progress=progress)
    from .backends.numpy_backend import NumpyBackend

    return NumpyBackend(config, gguf.tensors, progress=progress)


def _real_gpu_available() -> bool:
    try:
        from .backends.wgpu_context import GPUContext

        return not GPUContext.get().is_cpu_adapter
    except Exception:  # no wgpu, no adapter, no driver: the CPU path is the answer
        return False


class Model:
    """One GGUF model loaded for inference: config, tokenizer and a compute backend."""

    def __init__(self, path: Path, config: ModelConfig, tokenizer: Tokenizer, backend: Backend) -> None:
        self.path = path
        self.config = config
        self.tokenizer = tokenizer
        self.backend = backend

    @classmethod
    def load(cls, path: str | Path, backend: str = "numpy",
             progress: Callable[[float], None] | None = None) -> Model:
        """Read, validate and prepare a GGUF model; raises RealmError subclasses on bad files."""
        gguf = GGUFFile(path)
        config = ModelConfig.from_gguf(gguf)
        tokenizer = Tokenizer.from_metadata(gguf.metadata)
        return cls(gguf.path, config, tokenizer, create_backend(backend, config, gguf, progress))

    def first_layers(self, n_layers: int) -> Model:
        """The same model cut after its first n_layers, straight into the output head (self-speculation's
        draft): it shares the weights and the backend, and its sequences run n_layers per step."""
        if not 1 <= n_layers < self.config.n_layers:
            raise SequenceError(f"a model of {self.config.n_layers} layers can be cut after 1..{self.config.n_layers - 1}"
                                f" layers, not {n_layers}")
        return Model(self.path, dataclasses.replace(self.config, n_layers=n_layers), self.tokenizer, self.backend)

    def open_sequence(self, capacity: int | None = None) -> Sequence:
        """A new empty sequence with its own KV cache of at most `capacity` tokens."""
        limit = min(self.config.context_length, DEFAULT_SEQUENCE_CAPACITY) if capacity is None else capacity
        if not 0 < limit <= self.config.context_length:
            raise SequenceError(f"sequence capacity must be 1..{self.config.context_length}, got {limit}")
        return Sequence(self, limit)

    def logits_for(self, tokens: Seq[int]) -> np.ndarray:
        """Logits at every position of `tokens` (one prefill pass): float32 (n_tokens, n_vocab)."""
        seq = self.open_sequence(max(len(tokens), 1))
        seq.append(tokens)
        for layer in range(self.config.n_layers):
            seq.forward_layer(layer)
        return seq.finish(all_positions=True)


class Sequence:
    """One token sequence: its KV cache, committed tokens and the step in progress."""

    def __init__(self, model: Model, capacity: int) -> None:
        self.model = model
        self.capacity = capacity
        self.tokens: list[int] = []  # in the KV cache
        self.pending: list[int] = []  # appended, not yet run through the layers
        self.layers_done = 0
        self._cache: KVCache | None = model.backend.new_cache(capacity)
        self._x: Activations | None = None

    @property
    def closed(self) -> bool:
        return self._cache is None

    def append(self, ids: Seq[int]) -> None:
        """Queue tokens for the next step."""
        self._check_open()
        check_appendable(self)
        check_room(self, len(ids))
        check_token_ids(np.asarray(ids, np.int64), self.model.config.n_vocab)
        self.pending.extend(int(t) for t in ids)

    def forward_layer(self, layer: int) -> None:
        """Run layer `layer` (they must come in order 0, 1, ...) over the pending tokens."""
        self._check_open()
        check_next_layer(self, layer, self.model.config.n_layers)
        backend = self.model.backend
        if layer == 0:
            self._x = backend.embed(np.asarray(self.pending, np.int32))
        self._x = backend.layer(layer, self._x, self._cache, len(self.tokens))
        self.layers_done += 1

    def finish(self, all_positions: bool = False) -> np.ndarray:
        """Complete the step: logits of the last pending token (n_vocab,), or of all of them."""
        self._check_open()
        check_step_complete(self, self.model.config.n_layers)
        logits = self.model.backend.logits(self._x, last_only=not all_positions)
        self.tokens.extend(self.pending)
        self.pending, self.layers_done, self._x = [], 0, None
        return logits if all_positions else logits[-1]

    def step(self, ids: Seq[int]) -> np.ndarray:
        """append + every layer + finish: the logits after the last of `ids`."""
        self.append(ids)
        for layer in range(self.model.config.n_layers):
            self.forward_layer(layer)
        return self.finish()

    def truncate(self, n: int) -> None:
        """Keep only the first n committed tokens (drops any step in progress)."""
        self._check_open()
        if not 0 <= n <= len(self.tokens):
            raise SequenceError(f"cannot truncate a {len(self.tokens)}-token sequence to {n}")
        del self.tokens[n:]
        self.pending, self.layers_done, self._x = [], 0, None
        self._cache.truncate(n)

    def close(self) -> None:
        """Free the KV cache; further use raises SequenceError."""
        self._cache, self._x = None, None

    def _check_open(self) -> None:
        if self._cache is None:
            raise SequenceError("sequence is closed")
