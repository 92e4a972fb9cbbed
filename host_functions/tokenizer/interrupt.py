"""Cutting a long encode off: the callback the tokenizers call as they go, and how often they call it.

A guest's tokenize call is host work that wasm fuel cannot see, so the caller passes a callback
(the request's deadline check) and whatever it raises ends the encode.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

Interrupt = Callable[[], None]

# Long encodes call `interrupt` every this many merge steps, so a caller can cut them off at a deadline.
INTERRUPT_EVERY = 1 << 14


def never() -> None:
    """The interrupt of an encode nobody cuts off."""


def drain(queue: list[tuple[Any, ...]], interrupt: Interrupt) -> Iterator[tuple[Any, ...]]:
    """Pop `queue` (a heap the caller may push to meanwhile) until it is empty, smallest first, calling
    `interrupt` every INTERRUPT_EVERY pops: a merge loop's steps, cut off at the caller's deadline."""
    steps = 0
    while queue:
        steps += 1
        if steps % INTERRUPT_EVERY == 0:
            interrupt()
        yield heapq.heappop(queue)
