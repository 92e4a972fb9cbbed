"""One first step at a time per prompt: identical prompts of one tenant (the `n` choices of a request,
a retried request) prefill once, the others then take the blocks from the prefix cache.

Keyed by the chain key of the prompt's last full block (prefix_keys), which holds the tenant's salt:
only the same tenant's identical prompts ever wait for each other, so waiting says nothing about
another tenant.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from host_functions.errors import QuotaExceeded, RequestCancelled

POLL_S = 0.02  # how often a waiting step looks at its deadline and should_stop()


class PrefillGate:
    """The prompts whose first step is running now, by key; thread-safe."""

    def __init__(self) -> None:
        self._busy: set[bytes] = set()
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, key: bytes | None, deadline: float, should_stop: Callable[[], bool]) -> Iterator[None]:
        """Run the block with `key` held (None: at once, holding nothing), waiting while another holds it.

        Raises QuotaExceeded at `deadline` (time.monotonic()), RequestCancelled once should_stop() is true.
        """
        if key is None:
            yield
            return
        with self._cond:
            while key in self._busy:
                if should_stop():
                    raise RequestCancelled("request cancelled while waiting for the same prompt's prefill")
                if time.monotonic() >= deadline:
                    raise QuotaExceeded("request passed its deadline waiting for the same prompt's prefill")
                self._cond.wait(POLL_S)
            self._busy.add(key)
        try:
            yield
        finally:
            with self._cond:
                self._busy.discard(key)
                self._cond.notify_all()
