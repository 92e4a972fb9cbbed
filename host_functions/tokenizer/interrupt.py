"""Cutting a long encode off: the callback the tokenizers call as they go, and how often they call it.

A guest's tokenize call is host work that wasm fuel cannot see, so the caller passes a callback
(the request's deadline check) and whatever it raises ends the encode.
"""

from __future__ import annotations

from collections.abc import Callable

Interrupt = Callable[[], None]

# Long encodes call `interrupt` every this many merge steps, so a caller can cut them off at a deadline.
INTERRUPT_EVERY = 1 << 14


def never() -> None:
    """The interrupt of an encode nobody cuts off."""
