"""What `realm serve --replicas` hands its replicas (realm/cluster/launch.py), without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from realm.cluster.launch import replica_env


def test_replicas_get_the_realm_settings_with_an_absolute_home_and_their_threads(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REALM_HOME", "relative/home")
    monkeypatch.setenv("REALM_CPU_KERNELS", "portable")
    monkeypatch.setenv("REALM_THREADS", "8")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = replica_env(threads=2)
    assert env["REALM_HOME"] == str(tmp_path / "relative" / "home")
    assert env["REALM_CPU_KERNELS"] == "portable" and env["REALM_THREADS"] == "2"
    assert "UNRELATED_SECRET" not in env and all(name.startswith("REALM_") for name in env)


@pytest.mark.parametrize("home", [None, "~/realm-home"])
def test_the_home_is_named_even_where_it_is_the_default(monkeypatch, home):
    if home is None:
        monkeypatch.delenv("REALM_HOME", raising=False)
    else:
        monkeypatch.setenv("REALM_HOME", home)
    assert Path(replica_env(threads=1)["REALM_HOME"]).is_absolute()
