"""The registry's database: SQLite (one machine) or PostgreSQL (every replica shares it), behind one
small interface, so the registry's SQL is written once (`?` parameters, standard SQL) for both.

A transaction is `with db.transaction(lock=...) as tx:`; `lock=True` serializes it against every other
locking transaction on the database, from any process on any machine (SQLite: BEGIN IMMEDIATE;
PostgreSQL: a transaction-level advisory lock), which is what keeps a deployment and the collection of
an unused module from interleaving, and two starters from both applying a migration. Errors come out as
RegistryError (the database is unreachable or failed: the server answers 500) or Conflict (a row that
already exists); the URL in a message never shows its password.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from host_functions.errors import RealmError, TenantError

URL_FORMS = "sqlite:///ABS/PATH.db or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
LOCK_KEY = 0x7265616C6D  # b"realm": the advisory lock every locking transaction takes (PostgreSQL)
IDLE_CONNECTIONS = 4  # PostgreSQL connections kept open between transactions, per process and URL
CONNECT_TIMEOUT_S = 10

# Column types that differ: the DDL says {real}, {blob}, {bigint}, {id} (never a value: values are
# always parameters). PostgreSQL's REAL is 4 bytes, too coarse for a time in seconds.
TYPES = {
    "sqlite": {"real": "REAL", "blob": "BLOB", "bigint": "INTEGER", "id": "INTEGER PRIMARY KEY"},
    "postgresql": {"real": "DOUBLE PRECISION", "blob": "BYTEA", "bigint": "BIGINT", "id": "BIGSERIAL PRIMARY KEY"},
}


class RegistryError(RealmError):
    """The registry's database cannot be reached or used (a bad URL, a server down, a newer schema)."""


class Conflict(TenantError):
    """A row that must be unique already exists."""


Row = Any  # sqlite3.Row or a dict: both are read as row["column"]


class Tx:
    """One transaction: `execute` takes `?` parameters on either backend."""

    def __init__(self, cursor: Any, dialect: str) -> None:
        self.cursor, self.dialect = cursor, dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.cursor.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(self._sql(sql), [tuple(r) for r in rows])

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self.execute(sql, params).fetchall())

    def ddl(self, sql: str) -> None:
        """Run a schema statement whose column types are written {real}, {blob}, {bigint}, {id}."""
        self.cursor.execute(sql.format(**TYPES[self.dialect]))

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql


class Database:
    """A registry database named by URL (URL_FORMS); RegistryError for a URL that is neither."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = redact(url)
        parts = urlsplit(url)
        self.sqlite_path: Path | None = None
        if parts.scheme == "sqlite":
            path = unquote(parts.path)
            if parts.netloc or parts.query or parts.fragment or not path.startswith("/") or path.endswith("/"):
                raise RegistryError(f"bad registry URL {self.shown!r}: use {URL_FORMS}")
            self.sqlite_path = Path("/" + path.lstrip("/"))  # sqlite:////abs/path (SQLAlchemy's form) too
            self.dialect = "sqlite"
        elif parts.scheme in ("postgresql", "postgres"):  # the rest is libpq's to check (at connect)
            self.dialect = "postgresql"
        else:
            raise RegistryError(f"bad registry URL {self.shown!r}: use {URL_FORMS}")
        self.schema_current = False  # set by migrations.migrate
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue(IDLE_CONNECTIONS)

    @contextmanager
    def transaction(self, lock: bool = False) -> Iterator[Tx]:
        """A transaction, committed when the block ends and rolled back when it raises; `lock`: one
        at a time with every other locking transaction. Raises RegistryError, or Conflict."""
        try:
            if self.sqlite_path is not None:
                with self._sqlite(lock) as tx:
                    yield tx
            else:
                with self._postgres(lock) as tx:
                    yield tx
        except (sqlite3.IntegrityError, psycopg.errors.IntegrityError) as exc:
            raise Conflict(str(exc).splitlines()[0]) from None
        except (sqlite3.Error, psycopg.Error) as exc:
            raise RegistryError(f"tenant registry {self.shown}: {self._scrub(exc)}") from None

    def close(self) -> None:
        """Close the idle connections (a transaction later opens new ones)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    @contextmanager
    def _sqlite(self, lock: bool) -> Iterator[Tx]:
        assert self.sqlite_path is not None
        try:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"cannot open the tenant registry {self.shown}: {exc}") from None
        db = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
            try:
                yield Tx(db.cursor(), "sqlite")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @contextmanager
    def _postgres(self, lock: bool) -> Iterator[Tx]:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cursor:
                if lock:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                yield Tx(cursor, "postgresql")
        except psycopg.Error:
            conn.close()  # its state is unknown: never handed to the next transaction
            raise
        finally:
            if not conn.closed:
                try:
                    self._idle.put_nowait(conn)
                except queue.Full:
                    conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                                       connect_timeout=CONNECT_TIMEOUT_S)
            if not conn.closed and not conn.broken:
                return conn

    def _scrub(self, exc: Exception) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        password = urlsplit(self.url).password
        return text.replace(password, "***") if password else text


def redact(url: str) -> str:
    """The URL with its password (if any) as ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "<unparseable URL>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def open_database(url: str) -> Database:
    """The process's one Database for `url` (so its connections are shared); RegistryError for a bad URL."""
    with _databases_lock:
        if url not in _databases:
            _databases[url] = Database(url)
        return _databases[url]
