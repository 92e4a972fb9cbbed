"""Who a request's API key belongs to: its tenant (limits, models) and rate limits, remembered for at
most TTL_S, so a change made through any replica or `realm tenant` is seen within TTL_S everywhere.

Looking a key up reads the registry (a transaction and a few queries: milliseconds of CPU, a round
trip to PostgreSQL), and every request does it first, refused ones included: a tenant flooding the
server with requests it will be refused for (over its rate or its share) would spend the cores every
tenant shares on that alone. So the answer for a key, the tenant or the AuthError, is kept for TTL_S;
with a SQLite registry also only while its files are unchanged since it was read (any write, by this
server or another process, changes the database or its write-ahead log: a revoked key is refused at
once). Checking that costs two `stat` calls at most, so a known key is answered on the event loop;
only a key not known yet costs a registry read, off the loop.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from host_functions.errors import AuthError
from realm.tenants import RateLimits, Tenant, TenantRegistry, hash_key

TTL_S = 5.0
MAX_KEYS = 4096  # remembered at once, unknown keys included; the least recently used are forgotten

Identity = tuple[Tenant, RateLimits]
_Signature = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _Answer:
    identity: Identity | None
    refusal: str  # the AuthError's message when identity is None
    at: float
    signature: _Signature


class KeyCache:
    """Keys' tenants and rate limits, read from `registry` and remembered while it is unchanged."""

    def __init__(self, registry: TenantRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, _Answer] = OrderedDict()  # by the key's hash

    def known(self, key: str) -> Identity | None:
        """The key's tenant and rate limits if remembered and still current, else None (read it with
        `identify`, off the event loop). Raises AuthError for a key remembered as refused."""
        digest = hash_key(key)
        with self._lock:
            answer = self._answers.get(digest)
            if answer is None or time.monotonic() - answer.at >= TTL_S or answer.signature != self._signature():
                return None
            self._answers.move_to_end(digest)
        if answer.identity is None:
            raise AuthError(answer.refusal)
        return answer.identity

    def identify(self, key: str) -> Identity:
        """The key's tenant and rate limits, read from the registry (call it off the event loop) and
        remembered; AuthError for a key that is unknown or revoked, or whose tenant is gone."""
        signature = self._signature()  # before reading: a write meanwhile makes the answer stale
        try:
            identity: Identity | None = self.registry.tenant_for_key(key)
            refusal = ""
        except AuthError as exc:
            identity, refusal = None, str(exc)
        with self._lock:
            self._answers[hash_key(key)] = _Answer(identity, refusal, time.monotonic(), signature)
            while len(self._answers) > MAX_KEYS:
                self._answers.popitem(last=False)
        if identity is None:
            raise AuthError(refusal)
        return identity

    def _signature(self) -> _Signature:
        """A SQLite registry's database and write-ahead log as (modification time, size): any write
        changes it. () for PostgreSQL, whose changes are seen when TTL_S ends."""
        path = self.registry.db.sqlite_path
        return tuple(_stat(f"{path}{suffix}") for suffix in ("", "-wal")) if path else ()


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_mtime_ns, st.st_size
