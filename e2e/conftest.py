"""e2e tests drive the installed `realm` command in a subprocess, the way a user does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # the `oracle` helper module

REALM = shutil.which("realm", path=str(Path(sys.executable).parent)) or "realm"


@pytest.fixture
def realm(tmp_path: Path):
    """Run `realm ARGS...` with its own REALM_HOME; returns the CompletedProcess."""
    env = {**os.environ, "REALM_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}

    def run(*args: str, input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([REALM, *args], capture_output=True, text=True, env=env, input=input,
                              timeout=timeout)

    return run
