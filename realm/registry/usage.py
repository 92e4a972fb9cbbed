"""Usage records: one row per finished request, written by a background thread, read back as totals.

A server calls UsageWriter.record for every request it answers; that only puts the record on a
bounded queue (never blocks, never touches the database on the event loop). One thread takes what
has queued, up to BATCH records, and inserts them in one transaction. When the queue is full, or the
database refuses a batch, the records are dropped: counted (`dropped`, and the server's
realm_usage_records_dropped metric through `on_drop`) and logged (one line per LOG_EVERY_S at most,
with the count), never silently.
"""

from __future__ import annotations

import datetime
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from host_functions.errors import RealmError, TenantError
from realm.registry.database import Database, Tx

log = logging.getLogger("realm.usage")

CAPACITY = 10_000  # records waiting at most; past that they are dropped (the database is down or slow)
BATCH = 500
LOG_EVERY_S = 10.0  # drops are logged at most this often, each line counting those since the last
_RELATIVE = re.compile(r"(\d{1,9})([smhd])", re.ASCII)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INSERT = ("INSERT INTO usage_records (tenant, model, kind, status, prompt_tokens, completion_tokens, "
           "cached_tokens, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class UsageRecord:
    """One finished request: whose, which model, which endpoint, its HTTP status and tokens, when."""

    tenant: str
    model: str
    kind: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    at: float = 0.0

    def row(self) -> tuple[Any, ...]:
        return (self.tenant, self.model, self.kind, self.status, self.prompt_tokens, self.completion_tokens,
                self.cached_tokens, self.at or time.time())


class UsageWriter:
    """Writes usage records to `db` from a thread of its own; `close` writes what is queued and stops it."""

    def __init__(self, db: Database, on_drop: Callable[[int], None] = lambda n: None,
                 capacity: int = CAPACITY) -> None:
        self.db, self.on_drop = db, on_drop
        self.dropped = 0
        self._lock = threading.Lock()
        self._logged_at = -LOG_EVERY_S
        self._unlogged = 0  # drops since the last line logged
        self._queue: queue.Queue[UsageRecord | None] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._run, name="realm-usage-writer", daemon=True)
        self._thread.start()

    def record(self, record: UsageRecord) -> None:
        """Queue a record; never blocks (a full queue drops it, counted and logged)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop(1, "the queue is full (the registry is slow or down)")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (waiting up to `timeout` seconds) and stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._unlogged:
            log.warning("dropped %d more usage record(s), %d in all", self._unlogged, self.dropped)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH and batch[-1] is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write([r for r in batch if r is not None])
            if batch[-1] is None:
                return

    def _write(self, batch: list[UsageRecord]) -> None:
        if not batch:
            return
        try:
            with self.db.transaction() as tx:
                tx.executemany(_INSERT, [r.row() for r in batch])
        except RealmError as exc:
            self._drop(len(batch), str(exc))

    def _drop(self, n: int, why: str) -> None:
        with self._lock:
            self.dropped += n
            unlogged, self._unlogged = self._unlogged + n, 0
            if time.monotonic() - self._logged_at < LOG_EVERY_S:  # a flood of drops: one line a while
                self._unlogged = unlogged
                unlogged = 0
            else:
                self._logged_at = time.monotonic()
        self.on_drop(n)
        if unlogged:
            log.warning("dropped %d usage record(s), %d in all: %s", unlogged, self.dropped, why)


def report(tx: Tx, tenant: str, since: float | None) -> dict[str, Any]:
    """Tenant's usage since `since` (a Unix time; None: all of it): totals and per model."""
    rows = tx.all("SELECT model, COUNT(*) AS requests, "
                  "SUM(CASE WHEN status < 400 THEN 1 ELSE 0 END) AS succeeded, "
                  "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
                  "SUM(cached_tokens) AS cached_tokens FROM usage_records WHERE tenant = ? AND at >= ? "
                  "GROUP BY model ORDER BY model", (tenant, since or 0.0))
    fields = ("requests", "succeeded", "prompt_tokens", "completion_tokens", "cached_tokens")
    models = {r["model"]: {f: int(r[f] or 0) for f in fields} for r in rows}
    total = {f: sum(m[f] for m in models.values()) for f in fields}
    return {"tenant": tenant, "since": since, "total": total, "models": models}


def parse_since(text: str, now: float | None = None) -> float:
    """A Unix time from `--since`: an age (`90s`, `30m`, `12h`, `7d`) or an ISO date or date-time (UTC
    unless it says). TenantError for anything else."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return (now or time.time()) - int(relative[1]) * _UNIT_S[relative[2]]
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise TenantError(f"--since {text[:64]!r}: expected an age (30m, 12h, 7d) or an ISO date "
                          "(2026-01-31 or 2026-01-31T12:00)") from None
    return (when if when.tzinfo else when.replace(tzinfo=datetime.UTC)).timestamp()
