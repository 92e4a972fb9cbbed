"""Reading requests: the bearer key, and bodies bounded in size before they are read whole and
parsed off the event loop (a body's parsing time is the client's to choose)."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from host_functions.errors import AuthError
from realm.server.protocol import ApiError

MAX_JSON_DEPTH = 32  # objects and arrays within each other; OpenAI bodies nest 4 deep


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("missing API key: send Authorization: Bearer <key>")
    return key.strip()


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON; ApiError 413 past `limit` bytes, 400 if it is not JSON."""
    return await run_in_threadpool(parse_json, await read_body(request, limit))


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


def parse_json(data: bytes) -> Any:
    """`data` as JSON; ApiError 400 (invalid_json) for what is not JSON (NaN and Infinity included),
    holds a number Python cannot hold (an integer of over 4300 digits, a float that overflows),
    nests deeper than MAX_JSON_DEPTH, or holds a string that is not Unicode text (a lone surrogate
    escape such as "\\ud800", which no UTF-8 encoder writes: the tokenizer, the guest or the answer
    would fail on it)."""
    try:
        body = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as exc:  # not JSON, not UTF-8, an integer of more digits than Python converts
        raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None
    except RecursionError:
        body = None
        depth_ok = False
    else:
        depth_ok = _check_values(body)
    if not depth_ok:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return body


def _no_constant(name: str) -> Any:
    # NaN and Infinity are Python's extension, not JSON: no field means anything by them.
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:32]} is beyond a float's range")
    return value


def _check_values(body: Any) -> bool:
    """Whether `body` nests at most MAX_JSON_DEPTH deep; ApiError for a string that is not Unicode.
    A walk with its own stack, so no depth the parser accepted can overflow Python's."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "the request body holds a string that is not valid Unicode (a lone "
                                    "surrogate)", code="invalid_json") from None
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return False
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return True
