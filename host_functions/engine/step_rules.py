"""The rules of a sequence's step, each checked in one place: token ids in the vocabulary, room in the
KV cache, and the order append -> layers 0..n-1 -> finish.

The engine (`model.Sequence`) and the guest ABI (which must refuse a request before it reads or
converts the guest's ids) both call these; the ABI maps each error class to its status code.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Protocol

import numpy as np

from host_functions.errors import CapacityError, StepOrderError, TokenRangeError


class StepState(Protocol):
    """What the checks read of a sequence (`model.Sequence` has these), read-only."""

    @property
    def capacity(self) -> int: ...

    @property
    def tokens(self) -> Sized: ...  # committed to the KV cache

    @property
    def pending(self) -> Sized: ...  # appended, not yet through the layers

    @property
    def layers_done(self) -> int: ...


def check_token_id(token: int, n_vocab: int) -> int:
    """`token` if it is in 0..n_vocab-1; TokenRangeError otherwise."""
    if not 0 <= token < n_vocab:
        raise TokenRangeError(f"token id {token} out of range 0..{n_vocab - 1}")
    return token


def check_token_ids(ids: np.ndarray, n_vocab: int) -> None:
    """TokenRangeError unless every id of the integer array is in 0..n_vocab-1 (one vectorized pass)."""
    if len(ids) and (ids.min() < 0 or ids.max() >= n_vocab):
        bad = ids[(ids < 0) | (ids >= n_vocab)][0]
        raise TokenRangeError(f"token id {int(bad)} out of range 0..{n_vocab - 1}")


def check_room(seq: StepState, n_new: int) -> None:
    """CapacityError unless the sequence can take n_new more tokens; checked before they are read."""
    if n_new < 0:
        raise CapacityError(f"cannot append {n_new} tokens")
    if len(seq.tokens) + len(seq.pending) + n_new > seq.capacity:
        raise CapacityError(f"sequence capacity of {seq.capacity} tokens exceeded "
                            f"({len(seq.tokens) + len(seq.pending)} held, {n_new} more asked)")


def check_appendable(seq: StepState) -> None:
    """StepOrderError while a step is in progress (tokens join a step only before its first layer)."""
    if seq.layers_done:
        raise StepOrderError("cannot append tokens while a step is in progress")


def check_next_layer(seq: StepState, layer: int, n_layers: int) -> None:
    """StepOrderError unless tokens are pending and `layer` is the next one to run."""
    if not seq.pending:
        raise StepOrderError("no pending tokens: append tokens first")
    if layer != seq.layers_done or layer >= n_layers:
        raise StepOrderError(f"expected layer {seq.layers_done}, got {layer}")


def check_step_complete(seq: StepState, n_layers: int) -> None:
    """StepOrderError unless every layer has run over pending tokens."""
    if not seq.pending or seq.layers_done != n_layers:
        raise StepOrderError(f"step incomplete: {seq.layers_done} of {n_layers} layers run")
