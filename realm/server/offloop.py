"""Work a client controls, run off the event loop on a bounded pool of threads.

Parsing a body, tokenizing a prompt, rendering a chat template and reading the registry take time in
proportion to what the client sent (a 1 MiB prompt tokenizes for seconds). On the event loop that
time would stall every other connection, `/health` included; here it runs on worker threads, at most
`threads` at once, and at most `per_tenant` at once for each tenant, so one tenant's large requests
queue behind each other rather than in front of everyone else's. A tenant with `max_waiting` calls
already queued gets 429. Looking a key up, before the tenant is known, is short and bounded: it
takes a thread in its turn with no per-client bound (clients behind one address, as on loopback or
behind a proxy, may be different tenants).
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
    """Runs functions on threads, bounded in all and per tenant."""

    def __init__(self, threads: int = 16, per_tenant: int = 2, max_waiting: int = 16) -> None:
        self._threads = anyio.CapacityLimiter(threads)
        self._per_tenant = per_tenant
        self._max_waiting = max_waiting
        self._tenants: dict[str, anyio.CapacityLimiter] = {}
        self.pending = 0  # calls waiting for a thread or running on one

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a worker thread, in its turn; what it raises is raised here."""
        self.pending += 1
        try:
            return await self._on_thread(fn, *args)
        finally:
            self.pending -= 1

    async def run_for(self, tenant: str, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a worker thread, in turn with `tenant`'s other work; what it raises is raised
        here. ApiError 429 when `tenant` already has `max_waiting` calls waiting for their turn."""
        mine = self._tenants.get(tenant)
        if mine is None:
            mine = self._tenants[tenant] = anyio.CapacityLimiter(self._per_tenant)
        if mine.statistics().tasks_waiting >= self._max_waiting:
            raise ApiError(429, "too many of this tenant's requests are waiting to be read; retry shortly",
                           type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})
        self.pending += 1
        try:
            async with mine:
                return await self._on_thread(fn, *args)
        finally:
            self.pending -= 1
            if not mine.borrowed_tokens and not mine.statistics().tasks_waiting:
                self._tenants.pop(tenant, None)  # idle: the map holds only tenants with work in hand

    async def _on_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._threads)
