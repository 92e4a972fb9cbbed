"""The `x-realm-replica` header on every response a replica sends (errors and streams included)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from realm.cluster.routing import REPLICA_HEADER


def with_replica_header(app: ASGIApp, replica: str) -> ASGIApp:
    """`app`, each of its HTTP responses saying it came from `replica`."""
    value = replica.encode("latin-1")

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), value)]}
            await send(message)

        await app(scope, receive, send_with_header)

    return wrapped
