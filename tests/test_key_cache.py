"""The server's memory of which tenant a key belongs to (realm.server.identity): a known key is
answered without reading the registry, and any change to the registry (a revoked key, new limits, a
new key), made by this process or another, is seen: at the next request with SQLite (its files
changed), once TTL_S has passed with PostgreSQL (shortened here)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from host_functions.errors import AuthError
from realm.server import identity
from realm.server.identity import KeyCache
from realm.tenants import RateLimits, TenantRegistry


@pytest.fixture
def registry(registry_url: str | None, monkeypatch: pytest.MonkeyPatch) -> TenantRegistry:
    if registry_url:
        monkeypatch.setattr(identity, "TTL_S", 0.3)
    registry = TenantRegistry()
    registry.create("acme")
    return registry


def test_a_known_key_is_answered_from_memory_until_the_registry_changes(registry):
    _, key = registry.create_key("acme")
    cache = KeyCache(registry)
    assert cache.known(key) is None  # not read yet
    tenant, rates = cache.identify(key)
    assert tenant.name == "acme" and rates == RateLimits()
    assert cache.known(key) == (tenant, rates)
    registry.set_rate_limits("acme", RateLimits(requests_per_minute=3))
    _until_stale(registry)
    assert cache.known(key) is None  # the registry changed: read again
    assert cache.identify(key)[1] == RateLimits(requests_per_minute=3)


def test_a_key_revoked_by_another_process_is_refused_at_the_next_request(registry):
    made, key = registry.create_key("acme")
    cache = KeyCache(registry)
    cache.identify(key)
    script = f"from realm.tenants import TenantRegistry; TenantRegistry().revoke_key('acme', {made.key_id!r})"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    _until_stale(registry)
    assert cache.known(key) is None
    with pytest.raises(AuthError, match="revoked"):
        cache.identify(key)
    with pytest.raises(AuthError, match="revoked"):  # remembered as refused: no registry read
        cache.known(key)


@pytest.mark.parametrize("bad", ["", "nope", "realm-" + "x" * 5000, "\ud800"])
def test_unknown_keys_are_refused_and_a_key_made_later_is_seen(registry, bad):
    cache = KeyCache(registry)
    with pytest.raises(AuthError, match="invalid API key"):
        cache.identify(bad)
    with pytest.raises(AuthError):
        cache.known(bad)
    _, key = registry.create_key("acme")
    assert cache.known(key) is None and cache.identify(key)[0].name == "acme"


def _until_stale(registry: TenantRegistry) -> None:
    """Nothing with SQLite (a write is seen at once); with PostgreSQL, wait out the answers' TTL."""
    if registry.db.sqlite_path is None:
        time.sleep(identity.TTL_S)
