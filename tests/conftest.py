"""Shared fixtures: the session starts clean (clean_env), and every test runs with its own REALM_HOME
so no test touches the user's data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import the `oracle` helper module

from clean_env import start_clean  # noqa: E402  (found through the path above)
from postgres_server import postgres, registry_url  # noqa: E402, F401  (fixtures, shared)


def pytest_configure(config: pytest.Config) -> None:
    start_clean(config)


@pytest.fixture(autouse=True)
def realm_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("realm-home")
    monkeypatch.setenv("REALM_HOME", str(home))
    return home
