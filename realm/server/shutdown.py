"""Shutdown that tells each client whether its answer is whole.

uvicorn's graceful shutdown stops accepting connections, waits `timeout_graceful_shutdown` for the
requests in flight and then cancels their tasks, which cuts a stream with neither an error event
nor `[DONE]` (a client would take the truncated text as the whole answer). `DrainingServer` ends
the runs still going when the drain timeout passes, a few seconds before uvicorn cancels anything:
each run ends at its guest's next host call, and its stream ends with an error event saying the
server is shutting down (a whole answer gets 503 `server_shutdown`). A second signal (Ctrl-C twice)
ends them at once, answered the same way; only a third forces uvicorn's exit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

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
        timer = asyncio.get_running_loop().call_later(self.drain_timeout, self._end_runs, "drain timeout")
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """A first SIGINT/SIGTERM drains; a second (Ctrl-C again) ends the runs at once, each answered
        with its error, where uvicorn would force its exit and cut their streams; a third forces it."""
        if self.should_exit and not self.realm.shutting_down:
            self._end_runs("a second signal")
            return
        super().handle_exit(sig, frame)

    def _end_runs(self, why: str) -> None:
        if self.realm.runner.live:
            log.warning("%s: ending %d run(s) still in flight", why, self.realm.runner.live)
        self.realm.shutting_down = True
        self.realm.runner.cancel_all()
