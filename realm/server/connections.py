"""Slow and greedy clients at the connection level: what uvicorn bounds, and a guard for the rest.

uvicorn (its h11 protocol) bounds a request's headers in size (`h11_max_incomplete_event_size`),
closes idle keep-alive connections (`timeout_keep_alive`) and answers 503 past a server-wide number
of connections (`limit_concurrency`); `uvicorn_options` sets all three. It has no deadline for a
request's headers or body (a client sending a byte every few seconds keeps its connection, and a
worker's attention, forever: slowloris), no bound per client address, and h11 serves a request that
has both Content-Length and Transfer-Encoding (chunked wins) where RFC 9112 6.1 says to reject it or
close the connection. `GuardedH11Protocol` (uvicorn's own protocol, subclassed) adds the deadlines
and the per-address bound; `reject_ambiguous_framing` (ASGI middleware) answers such a request 400
and closes its connection. Each refusal is one warning in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import h11
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from realm.server.protocol import ApiError

log = logging.getLogger("realm.server")
_REFUSED_LINGER_S = 1.0  # a refused connection stays open this long, so its client reads the 503, not a reset


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may hold of the server's connections (docs/serve.md, "Slow clients")."""

    header_timeout: float = 10.0  # from connecting (or the last answer) until the request's headers are in
    body_timeout: float = 30.0  # from the headers until the whole body is in
    keep_alive: int = 5  # an idle keep-alive connection is closed after this many seconds
    max_header_bytes: int = 16384
    max_connections: int = 1024  # in all; beyond, uvicorn answers 503
    per_client: int = 64  # per client address (0: no bound)


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """uvicorn.Config's arguments for `limits`: its own bounds, and the guarded protocol."""
    # No WebSocket routes: without "ws": "none" uvicorn would hand an upgraded connection to another
    # protocol, out of the guard's sight.
    return {"http": guarded_protocol(limits), "ws": "none", "timeout_keep_alive": limits.keep_alive,
            "limit_concurrency": limits.max_connections, "h11_max_incomplete_event_size": limits.max_header_bytes}


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A GuardedH11Protocol class for one server: its connections share `limits` and one table of
    connections by client address."""

    class Guarded(GuardedH11Protocol):
        pass

    Guarded.limits, Guarded.by_address = limits, {}
    return Guarded


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for a request's headers and body, and a bound on the
    connections of one client address.

    At the bound, a new connection takes the place of that address's oldest connection that is not
    being answered (idle, or its request still arriving), which is closed; if every one is being
    answered, the new one gets 503. So a client holding connections open without finishing requests
    never locks out a client behind the same address (a proxy, or loopback) that sends whole ones.
    """

    limits = ConnectionLimits()
    by_address: dict[str, list[GuardedH11Protocol]] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = time.monotonic()
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: object = None
        self._address = self.client[0] if self.client else ""
        self._refused = not self._take_place()
        if self._refused:
            log.warning("refused a connection from %s: it has %d open", self._address, self.limits.per_client)
            transport.write(_overloaded())
            self.loop.call_later(_REFUSED_LINGER_S, transport.close)
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None, 0.0)
        mine = self.by_address.get(self._address, [])
        if self in mine:
            mine.remove(self)
            if not mine:
                del self.by_address[self._address]
        super().connection_lost(exc)

    def _take_place(self) -> bool:
        """Count this connection against its address; False when the address is at its bound and has
        no connection to give up."""
        mine = self.by_address.setdefault(self._address, [])
        mine[:] = [c for c in mine if not c.transport.is_closing()]  # closed already: no place held
        if self.limits.per_client and len(mine) >= self.limits.per_client:
            waiting = [c for c in mine if c._arriving()]
            if not waiting:
                return False
            oldest = min(waiting, key=lambda c: c._opened)
            log.warning("closed a connection from %s to make room: %d open, none answered on this one",
                        self._address, len(mine))
            oldest._close()
            mine.remove(oldest)  # closing: its place is free now, not when its connection_lost comes
        mine.append(self)
        return True

    def _arriving(self) -> bool:
        """Idle, or a request still arriving: nothing is being answered on this connection."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()

    def _watch(self) -> None:
        """Keep the deadline of the phase the connection is in: headers (IDLE), body (SEND_BODY)."""
        phase = self.conn.their_state
        if phase is self._phase:
            return
        self._phase = phase
        if phase is h11.IDLE:
            self._set_deadline("headers", self.limits.header_timeout)
        elif phase is h11.SEND_BODY:
            self._set_deadline("body", self.limits.body_timeout)
        else:
            self._set_deadline(None, 0.0)

    def _set_deadline(self, what: str | None, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if what is not None:
            self._deadline = self.loop.call_later(seconds, self._expired, what, seconds)

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if what == "body" or self.conn.trailing_data[0]:
            log.warning("closed a connection from %s: its request's %s did not arrive within %g s",
                        self._address, what, seconds)
        self._close()  # an idle one (nothing sent since its last answer) closes without a word

    def _close(self) -> None:
        self._set_deadline(None, 0.0)
        self.transport.close()


def _overloaded() -> bytes:
    body = json.dumps(ApiError(503, "too many connections from this address; retry shortly", type="server_error",
                               code="too_many_connections").body()).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


def reject_ambiguous_framing(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: a request with both Content-Length and Transfer-Encoding gets 400 and its
    connection is closed (RFC 9112 6.1: the two framings may disagree; a proxy in front may have read
    the other one, so nothing after it on the connection can be trusted)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                client = scope.get("client") or ("", 0)
                log.warning("refused a request from %s with both Content-Length and Transfer-Encoding", client[0])
                error = ApiError(400, "a request may not have both Content-Length and Transfer-Encoding",
                                 code="ambiguous_framing")
                await JSONResponse(error.body(), status_code=400, headers={"Connection": "close"})(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded
