"""The host objects one request may name, and the states behind sequence and sampler handles."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..model import Sequence
from ..sampling import Sampler
from .limits import MAX_I32
from .status import AbiError, Status

T = TypeVar("T")
_MISSING = object()


class HandleTable:
    """The host objects one request may name. Handles are random positive i32 and never reused,
    so a closed handle or a number seen in another request is (almost surely) not in the table,
    and even when it is, it names this request's own object."""

    def __init__(self) -> None:
        self._objects: dict[int, object] = {}
        self._issued: set[int] = set()
        self._rng = random.Random()  # seeded from os.urandom

    def add(self, obj: object) -> int:
        while (handle := self._rng.randint(1, MAX_I32)) in self._issued:
            pass
        self._issued.add(handle)
        self._objects[handle] = obj
        return handle

    def get(self, handle: int, kind: type[T]) -> T:
        obj = self._objects.get(handle, _MISSING)
        if obj is _MISSING or not isinstance(obj, kind):
            raise AbiError(Status.BAD_HANDLE, f"{handle} is not a live {kind.__name__} handle of this request")
        return obj

    def remove(self, handle: int, kind: type[T]) -> T:
        obj = self.get(handle, kind)
        del self._objects[handle]
        return obj

    def count(self, kind: type) -> int:
        return sum(isinstance(o, kind) for o in self._objects.values())

    def objects(self, kind: type[T]) -> list[T]:
        return [o for o in self._objects.values() if isinstance(o, kind)]


@dataclass(eq=False)
class SeqState:
    """A guest's sequence: the engine's Sequence, the logits of its last step and its text decoder."""

    seq: Sequence
    logits: np.ndarray | None = None  # (n_vocab,) float32 the logit functions use, until the next append
    rows: np.ndarray | None = None  # (n, n_vocab) every row of the last seq_finish_all step
    records_samples: bool = False  # a draft sequence: keep what each sample was drawn from
    sampled: list[tuple[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=list)  # (token, (ids, p))
    decoder: Any = None  # the tokenizer's StreamDecoder, created on the first text_push
    text: bytearray = field(default_factory=bytearray)  # decoded, not yet copied to the guest

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


@dataclass(eq=False)
class SamplerState:
    sampler: Sampler
