"""Which replica serves a request: rendezvous (highest-random-weight) hashing of its tenant's key.

Every replica gets a weight for a key, SHA-256(key hash, replica id); the request goes to the
highest. A replica that dies takes only its own keys with it: every other key's highest weight is
unchanged, and a dead replica's keys go each to its own second choice, so they spread over the
survivors. No table is kept: any router, in any proxy, computes the same answer from the same
running replicas. Requests are identified by the SHA-256 of their bearer key, never the key itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

REPLICA_HEADER = "x-realm-replica"  # on every response: the replica that served it; from the admin: the one to use
_AUTHORIZATION = b"authorization"
_BEARER = b"bearer "


def key_hash(key: str | bytes) -> str:
    """The SHA-256 (hex) of an API key: what routing and its state hold instead of the key."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def tenant_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The hash of the request's bearer key (ASGI headers), or None for a request without one."""
    for name, value in headers:
        if name.lower() == _AUTHORIZATION and value[:len(_BEARER)].lower() == _BEARER:
            key = value[len(_BEARER):].strip()
            return key_hash(key) if key else None
    return None


def header(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of header `name` (lower case) among ASGI headers, or None."""
    wanted = name.encode()
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def ranked(key: str, replicas: Sequence[str]) -> list[str]:
    """`replicas` (their ids) from the one that serves `key` to the last resort: by their weight for
    the key, highest first (ties, which SHA-256 makes unlikely, by id)."""
    return sorted(replicas, key=lambda replica: (_weight(key, replica), replica), reverse=True)


def _weight(key: str, replica: str) -> bytes:
    return hashlib.sha256(f"{key}\0{replica}".encode()).digest()
