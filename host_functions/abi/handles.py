"""The host objects one request may name, and the states behind sequence and sampler handles."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from host_functions.abi.limits import MAX_I32
from host_functions.abi.status import AbiError, Status
from host_functions.constraint import Constraint
from host_functions.engine.model import Sequence
from host_functions.engine.sampling import Sampler
from host_functions.tokenizer import StreamDecoder

T = TypeVar("T")
_MISSING = object()


class HostObject(Protocol):
    """What a handle names: anything that can say what it keeps on the host."""

    def host_bytes(self) -> int:
        """Bytes this object keeps on the host, for the request's host-memory budget."""
        ...


class HandleTable:
    """The host objects one request may name.

    Handles are positive i32 that look random and are never reused within a request: the n-th
    handle is (a * n + b) mod (2**31 - 1) + 1 for a random key (a, b), a permutation of the
    counter, so a closed handle or a number seen in another request is (almost surely) not in
    the table, and even when it is, it names this request's own object. Nothing is kept per
    handle ever issued, so a guest that opens and frees objects in a loop costs no memory.
    """

    def __init__(self) -> None:
        self._objects: dict[int, HostObject] = {}
        rng = random.SystemRandom()
        self._a, self._b = rng.randrange(1, MAX_I32), rng.randrange(MAX_I32)
        self._issued = 0

    def add(self, obj: HostObject) -> int:
        """A new handle for `obj`; INVALID_ARGUMENT once the request has used up its handles."""
        if self._issued >= MAX_I32:  # the permutation would repeat; no request lives that long
            raise AbiError(Status.INVALID_ARGUMENT, "this request has used up its handles")
        handle = (self._a * self._issued + self._b) % MAX_I32 + 1
        self._issued += 1
        self._objects[handle] = obj
        return handle

    def get(self, handle: int, kind: type[T]) -> T:
        """The live object of type `kind` behind `handle`; BAD_HANDLE for anything else."""
        obj = self._objects.get(handle, _MISSING)
        if obj is _MISSING or not isinstance(obj, kind):
            raise AbiError(Status.BAD_HANDLE, f"{handle} is not a live {kind.__name__} handle of this request")
        return obj

    def remove(self, handle: int, kind: type[T]) -> T:
        """Take the object out of the table (its handle is dead from now on); BAD_HANDLE as `get`."""
        obj = self.get(handle, kind)
        del self._objects[handle]
        return obj

    def count(self, kind: type) -> int:
        return sum(isinstance(o, kind) for o in self._objects.values())

    def objects(self, kind: type[T]) -> list[T]:
        return [o for o in self._objects.values() if isinstance(o, kind)]

    def host_bytes(self) -> int:
        """What the live objects keep on the host (each object's own estimate)."""
        return sum(o.host_bytes() for o in self._objects.values())


# Estimates of what host objects cost, for the request's host-memory budget (Limits.max_host_bytes):
# generous round numbers for the Python objects, exact sizes for the arrays and buffers.
SEQUENCE_BYTES = 8 << 10  # a Sequence, its state and decoder, the backend's per-sequence bookkeeping
TOKEN_BYTES = 40  # one token id held in a Python list (slot + int object)
SAMPLER_BYTES = 8 << 10  # a Sampler, its parameters and NumPy Generator
STOP_STRING_BYTES = 64  # one stop string's object, beyond its text


@dataclass(eq=False)
class SeqState:
    """A guest's sequence: the engine's Sequence, the logits of its last step and its text decoder."""

    seq: Sequence
    logits: np.ndarray | None = None  # (n_vocab,) float32 the logit functions use, until the next append
    rows: np.ndarray | None = None  # (n, n_vocab) every row of the last seq_finish_all step
    records_samples: bool = False  # a draft sequence: keep what each sample was drawn from
    sampled: list[tuple[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=list)  # (token, (ids, p))
    decoder: StreamDecoder | None = None  # created on the first text_push
    text: bytearray = field(default_factory=bytearray)  # decoded, not yet copied to the guest
    constraint: Constraint | None = None  # masks sampling; advanced by every token appended (constraint_open)
    constrained_from: int = 0  # the sequence's length when the constraint was opened

    def require_logits(self) -> np.ndarray:
        if self.logits is None:
            raise AbiError(Status.WRONG_STATE, "no logits: call seq_finish after the last layer first")
        return self.logits

    def set_logits(self, logits: np.ndarray | None) -> None:
        """The last step's logits (None: no step since the last append or truncate)."""
        self.logits, self.rows = logits, None

    def set_rows(self, rows: np.ndarray) -> None:
        """Every row of a step's logits; the last one is selected."""
        self.rows, self.logits = rows, rows[-1]

    def record_sample(self, token: int, distribution: tuple[np.ndarray, np.ndarray], keep: int) -> None:
        self.sampled.append((token, distribution))
        del self.sampled[:-keep]

    def host_bytes(self) -> int:
        """Host memory held for this sequence, besides its KV cache (bounded by max_context)."""
        kept = sum(a.nbytes for a in (self.logits, self.rows) if a is not None)
        kept += sum(ids.nbytes + p.nbytes for _, (ids, p) in self.sampled)
        return SEQUENCE_BYTES + TOKEN_BYTES * (len(self.seq.tokens) + len(self.seq.pending)) + kept + len(self.text)


@dataclass(eq=False)
class SamplerState:
    sampler: Sampler

    def host_bytes(self) -> int:
        stop = self.sampler.params.stop
        return SAMPLER_BYTES + sum(STOP_STRING_BYTES + len(s) * 4 for s in stop)  # up to 4 bytes a character
