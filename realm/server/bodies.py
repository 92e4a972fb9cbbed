"""Reading requests: the bearer key, and bodies bounded in size before they are read whole."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from host_functions.errors import AuthError
from realm.server.protocol import ApiError


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("missing API key: send Authorization: Bearer <key>")
    return key.strip()


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON; ApiError 413 past `limit` bytes, 400 if it is not JSON."""
    return _parse_json(await read_body(request, limit))


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, at most `limit` bytes (413 beyond, before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over the {limit} byte limit", code="body_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is over the {limit} byte limit", code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected while sending the body") from None
    return b"".join(chunks)


def _parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
