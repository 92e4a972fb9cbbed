"""A real PostgreSQL server for the tests (Debian's `postgresql` package: `scripts/setup.sh --test`
installs it), and the fixtures tests/ and e2e/ share (their conftests import them):

- `postgres`: the server, started once per session in a temporary folder owned by the `postgres` user
  (initdb and pg_ctl run as that user when the tests run as root), listening on a unix socket in that
  folder and a free TCP port on 127.0.0.1 with trust authentication; stopped (`pg_ctl stop -m fast`)
  and its folder removed at the end of the session.
- `registry_url`: parametrized over both backends: None (the default, SQLite under REALM_HOME) and the
  URL of a new, empty PostgreSQL database of the test's own. Tests under tests/ get it set as
  REALM_REGISTRY_URL; a test starting `realm` processes puts it in their environment.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from realm.registry.database import open_database

POSTGRES_ROOT = Path("/usr/lib/postgresql")  # Debian's: one folder per major version
INSTALL_HINT = "PostgreSQL's server (initdb, pg_ctl) is not installed: `scripts/setup.sh --test` installs it"


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/VERSION/bin)."""
    found = sorted(POSTGRES_ROOT.glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return Path(on_path).parent


class PostgresServer:
    """One PostgreSQL server in a folder of its own; `url(db)` names a database on it."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="realm-pg-"))
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(f"no `postgres` user to run PostgreSQL as: {INSTALL_HINT}", pytrace=False)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._numbers = itertools.count()

    def start(self) -> None:
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = (f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        try:
            if (self.root / "data" / "postmaster.pid").exists():  # started (a failed start left none)
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        name = f"realm_test_{next(self._numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # name: made above, not from outside
        return self.url(name)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                              timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """None: the default registry (SQLite in REALM_HOME); else a fresh PostgreSQL database's URL,
    also set as REALM_REGISTRY_URL for this test."""
    if request.param == "sqlite":
        yield None
        return
    url = request.getfixturevalue("postgres").new_database()
    monkeypatch.setenv("REALM_REGISTRY_URL", url)
    yield url
    open_database(url).close()  # this process's idle connections to it: the server's connections are few
