"""e2e tests drive the installed `realm` command in a subprocess, the way a user does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # the `oracle` helper module

from clean_env import start_clean  # noqa: E402  (found through the path above)
from postgres_server import postgres, registry_url  # noqa: E402, F401  (fixtures, shared)

REALM = shutil.which("realm", path=str(Path(sys.executable).parent)) or "realm"


def pytest_configure(config: pytest.Config) -> None:
    start_clean(config)


@pytest.fixture
def realm_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `realm` subprocess: its own REALM_HOME, unbuffered output."""
    return {**os.environ, "REALM_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def realm(realm_env: dict[str, str], tmp_path: Path):
    """Run `realm ARGS...` in the test's own directory (a relative path it writes lands there, not in the
    source tree); returns the CompletedProcess (text). Its stdin is `input` (str or bytes), empty by
    default: never the terminal pytest may have been started from."""

    def run(*args: str, input: str | bytes = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:
        if isinstance(input, bytes):
            done = subprocess.run([REALM, *args], capture_output=True, env=realm_env, input=input, timeout=timeout,
                                  cwd=tmp_path)
            return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode("utf-8", "replace"),
                                               done.stderr.decode("utf-8", "replace"))
        return subprocess.run([REALM, *args], capture_output=True, text=True, env=realm_env, input=input,
                              timeout=timeout, cwd=tmp_path)

    return run

