"""Which Ray clusters `realm serve --replicas --ray-address` sends this machine's Ray token to
(realm/cluster/ray_token.py): one on this machine, when RAY_AUTH_MODE is unset and a token is here."""

from __future__ import annotations

import os
import socket

import pytest

from realm.cluster.ray_token import AUTH_MODE, gcs_host_port, is_this_machine, send_local_token_to, token_available

ELSEWHERE = "203.0.113.7"  # TEST-NET-3: never an address of this machine


def _own_address() -> str:
    """An address of this machine that is not loopback (the one a route to the outside leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((ELSEWHERE, 9))  # no packet is sent: this only picks the source address
        return probe.getsockname()[0]


@pytest.fixture
def token_home(monkeypatch, tmp_path):
    """A home with ~/.ray/auth_token, RAY_AUTH_MODE and the token variables unset."""
    for name in (AUTH_MODE, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        # set first, so that the teardown restores it even where it was unset (send_local_token_to sets
        # RAY_AUTH_MODE itself, and a Ray of a later test must not find it)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0" * 64)
    return tmp_path


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "own"])
def test_a_cluster_on_this_machine_gets_its_token(token_home, host):
    send_local_token_to(f"{_own_address() if host == 'own' else host}:6379")
    assert os.environ[AUTH_MODE] == "token"


@pytest.mark.parametrize("address", [f"{ELSEWHERE}:6379", "auto", None, "ray://127.0.0.1:10001",
                                     "no-such-host.invalid:6379", "127.0.0.1"])
def test_no_token_for_a_cluster_elsewhere_or_one_ray_finds_itself(token_home, address):
    send_local_token_to(address)
    assert AUTH_MODE not in os.environ


def test_a_mode_the_user_set_is_kept(token_home, monkeypatch):
    monkeypatch.setenv(AUTH_MODE, "disabled")
    send_local_token_to("127.0.0.1:6379")
    assert os.environ[AUTH_MODE] == "disabled"


def test_without_a_token_nothing_is_sent(token_home):
    (token_home / ".ray" / "auth_token").unlink()
    assert not token_available()
    send_local_token_to("127.0.0.1:6379")
    assert AUTH_MODE not in os.environ


@pytest.mark.parametrize("where", ["variable", "path"])
def test_a_token_is_found_where_ray_looks(token_home, monkeypatch, tmp_path, where):
    (token_home / ".ray" / "auth_token").unlink()
    if where == "variable":
        monkeypatch.setenv("RAY_AUTH_TOKEN", "1" * 64)
    else:
        (tmp_path / "token").write_text("1" * 64)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert token_available()


def test_this_machine_is_told_from_others():
    assert is_this_machine("127.0.0.1") and is_this_machine(_own_address())
    assert not is_this_machine(ELSEWHERE) and not is_this_machine("no-such-host.invalid")


@pytest.mark.parametrize("address,expected", [
    ("10.0.0.1:6379", ("10.0.0.1", 6379)), ("[::1]:6379", ("::1", 6379)), ("head.example:6379", ("head.example", 6379)),
    ("auto", None), ("ray://10.0.0.1:10001", None), ("10.0.0.1", None), (":6379", None), ("10.0.0.1:port", None),
])
def test_a_gcs_address_is_host_and_port_and_ray_s_other_forms_are_left_to_ray(address, expected):
    assert gcs_host_port(address) == expected
