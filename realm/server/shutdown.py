"""Shutdown that tells each client whether its answer is whole.

uvicorn's graceful shutdown stops accepting connections, waits `timeout_graceful_shutdown` for the
requests in flight and then cancels their tasks, which cuts a stream with neither an error event
nor `[DONE]` (a client would take the truncated text as the whole answer). `DrainingServer` ends
the runs still going when the drain timeout passes, a few seconds before uvicorn cancels anything:
each run ends at its guest's next host call, and its stream ends with an error event saying the
server is shutting down (a whole answer gets 503 `server_shutdown`).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from realm.server.app import Server

log = logging.getLogger("realm.server")
GRACE_S = 5  # after the drain timeout: for ended runs to send their error events


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that ends `server`'s runs `drain_timeout` seconds into a shutdown (configure
    uvicorn's own timeout_graceful_shutdown as drain_timeout + GRACE_S)."""

    def __init__(self, config: uvicorn.Config, server: Server, drain_timeout: float) -> None:
        super().__init__(config)
        self.realm, self.drain_timeout = server, drain_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self.drain_timeout, self._end_runs)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _end_runs(self) -> None:
        if self.realm.runner.live:
            log.warning("drain timeout: ending %d run(s) still in flight", self.realm.runner.live)
        self.realm.shutting_down = True
        self.realm.runner.cancel_all()
