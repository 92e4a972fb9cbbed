"""Work a client controls, run off the event loop on a bounded pool of threads.

Parsing a body, tokenizing a prompt, rendering a chat template and reading the registry take time in
proportion to what the client sent (a 1 MiB prompt tokenizes for seconds). On the event loop that
time would stall every other connection, `/health` included; here it runs on worker threads, at most
`threads` at once, and at most `per_client` at once for each tenant (or, before a request is
authenticated, each client address), so one client's large requests queue behind each other rather
than in front of everyone else's. A client with `max_waiting` requests already queued gets 429.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from realm.server.protocol import ApiError

T = TypeVar("T")


class OffLoop:
    """Runs functions on threads, bounded in all and per client key."""

    def __init__(self, threads: int = 8, per_client: int = 2, max_waiting: int = 16) -> None:
        self._threads = anyio.CapacityLimiter(threads)
        self._per_client = per_client
        self._max_waiting = max_waiting
        self._clients: dict[str, anyio.CapacityLimiter] = {}
        self.pending = 0  # calls waiting for a thread or running on one


    async def run(self, client: str, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a worker thread, in turn with `client`'s other work; what it raises is raised
        here. ApiError 429 when `client` already has `max_waiting` calls waiting for their turn."""
        mine = self._clients.get(client)
        if mine is None:
            mine = self._clients[client] = anyio.CapacityLimiter(self._per_client)
        if mine.statistics().tasks_waiting >= self._max_waiting:
            raise ApiError(429, "too many of this client's requests are waiting to be read; retry shortly",
                           type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})
        self.pending += 1
        try:
            async with mine:
                return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._threads)
        finally:
            self.pending -= 1
            if not mine.borrowed_tokens and not mine.statistics().tasks_waiting:
                self._clients.pop(client, None)  # idle: the map holds only clients with work in hand
