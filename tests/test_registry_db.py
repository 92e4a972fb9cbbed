"""The registry's database (realm.registry): URLs, versioned migrations (an old realm.db adopted, a
newer schema refused, concurrent starters), and usage records, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest

from realm.registry.database import Database, RegistryError
from realm.registry.migrations import LATEST, migrate
from realm.registry.usage import UsageRecord, UsageWriter, parse_since
from realm.sandbox.intake import reference_guest_path
from realm.tenants import TenantRegistry, hash_key

# The schema of the registry before migrations existed (f6a720a), as its code created it.
OLD_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, created_at REAL NOT NULL, limits TEXT NOT NULL, "
    "module_sha256 TEXT, module_size INTEGER, deployed_at REAL)",
    "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, sha256 TEXT NOT NULL "
    "UNIQUE, created_at REAL NOT NULL, revoked_at REAL)",
    "CREATE TABLE IF NOT EXISTS rate_limits (tenant TEXT PRIMARY KEY, requests_per_minute INTEGER, "
    "tokens_per_minute INTEGER)",
    "CREATE TABLE IF NOT EXISTS lora_bindings (tenant TEXT NOT NULL, alias TEXT NOT NULL, path TEXT NOT NULL, "
    "scale REAL NOT NULL, PRIMARY KEY (tenant, alias))",
    "CREATE TABLE IF NOT EXISTS tenant_models (tenant TEXT NOT NULL, model TEXT NOT NULL, PRIMARY KEY (tenant, model))",
]


def test_a_registry_made_before_migrations_is_adopted_with_its_data(realm_home: Path):
    module = reference_guest_path().read_bytes()
    sha256 = hashlib.sha256(module).hexdigest()
    (realm_home / "modules").mkdir()
    (realm_home / "modules" / f"{sha256}.wasm").write_bytes(module)
    key = "rk-0123abcd-secret"
    with sqlite3.connect(realm_home / "realm.db") as old:
        for statement in OLD_SCHEMA:
            old.execute(statement)
        old.execute("INSERT INTO tenants VALUES ('acme', 1.5, '{\"fuel\": 1000}', ?, ?, 2.5)", (sha256, len(module)))
        old.execute("INSERT INTO api_keys VALUES ('0123abcd', 'acme', ?, 1.5, NULL)", (hash_key(key),))
        old.execute("INSERT INTO rate_limits VALUES ('acme', 7, NULL)")
        old.execute("INSERT INTO tenant_models VALUES ('acme', 'tiny-llama')")
    registry = TenantRegistry()
    tenant, rates = registry.tenant_for_key(key)
    assert (tenant.name, tenant.limits.fuel, tenant.models, rates.requests_per_minute) == ("acme", 1000,
                                                                                           ("tiny-llama",), 7)
    assert registry.module_bytes(sha256) == module and registry.guest("acme").sha256 == sha256
    with registry.db.transaction() as tx:
        assert [r["version"] for r in tx.all("SELECT version FROM schema_version ORDER BY version")] == list(
            range(1, LATEST + 1))


def test_a_registry_newer_than_the_code_is_refused(registry_url: str | None):
    registry = TenantRegistry()
    registry.check()
    with registry.db.transaction() as tx:
        tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (LATEST + 1, 0.0))
    with pytest.raises(RegistryError, match=f"schema version {LATEST + 1}, newer than this Realm's {LATEST}"):
        migrate(Database(registry.db.url))  # a process that has not opened it yet


def test_starters_at_once_apply_each_migration_once(registry_url: str | None):
    url = TenantRegistry().db.url
    errors: list[Exception] = []

    def start() -> None:
        try:
            migrate(Database(url))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Database(url).transaction() as tx:
        assert [r["version"] for r in tx.all("SELECT version FROM schema_version ORDER BY version")] == list(
            range(1, LATEST + 1))


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite:relative.db", "sqlite://host/x.db", "sqlite:///", "nonsense",
                                 "sqlite:///x.db?mode=ro"])
def test_a_bad_url_is_one_clear_error(url):
    with pytest.raises(RegistryError, match="bad registry URL .*: use sqlite:///ABS/PATH.db or postgresql://"):
        Database(url)


@pytest.mark.parametrize("url", ["postgresql://realm:s3cret-pw@127.0.0.1:1/realm",
                                 "postgresql://realm:s3cret-pw@127.0.0.1:notaport/realm"])
def test_an_unreachable_or_malformed_database_is_an_error_that_never_shows_the_password(url):
    with pytest.raises(RegistryError, match=r"tenant registry postgresql://realm:\*\*\*@127.0.0.1:") as caught:
        TenantRegistry(url).list()
    assert "s3cret-pw" not in str(caught.value)


def test_usage_records_are_written_in_the_background_and_summed_per_model(registry_url: str | None):
    registry = TenantRegistry()
    registry.create("acme")
    registry.create("beta")
    writer = registry.usage_writer()
    for record in [UsageRecord("acme", "gemma", "completion", 200, 10, 5, 4, at=100.0),
                   UsageRecord("acme", "gemma", "chat", 429, 0, 0, 0, at=200.0),
                   UsageRecord("acme", "tiny", "completion", 200, 3, 2, 0, at=300.0),
                   UsageRecord("beta", "tiny", "completion", 200, 1, 1, 0, at=300.0)]:
        writer.record(record)
    writer.close()
    assert writer.dropped == 0
    usage = registry.usage("acme")
    assert usage["total"] == {"requests": 3, "succeeded": 2, "prompt_tokens": 13, "completion_tokens": 7,
                              "cached_tokens": 4}
    assert usage["models"]["gemma"]["requests"] == 2 and usage["models"]["tiny"]["prompt_tokens"] == 3
    assert registry.usage("acme", since=250.0)["total"]["requests"] == 1
    registry.delete("acme")
    registry.create("acme")
    assert registry.usage("acme")["total"]["requests"] == 0  # a new tenant of the name starts with none


def test_usage_records_the_database_refuses_are_counted_and_logged(caplog):
    dropped: list[int] = []
    writer = UsageWriter(Database("postgresql://realm@127.0.0.1:1/realm"), dropped.append)
    for _ in range(3):
        writer.record(UsageRecord("acme", "gemma", "completion", 200, 1, 1))
    writer.close()
    assert writer.dropped == 3 == sum(dropped)
    assert "dropped" in caplog.text and "usage record" in caplog.text


@pytest.mark.parametrize("text, expected", [("90s", 910.0), ("30m", -800.0), ("2h", 1000.0 - 7200), ("1d", -85400.0),
                                            ("1970-01-01T00:10:00", 600.0), ("1970-01-01", 0.0),
                                            ("1970-01-01T01:00:00+01:00", 0.0)])
def test_since_is_an_age_or_an_iso_date(text, expected):
    assert parse_since(text, now=1000.0) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "5y", "-3h", "2026-13-01"])
def test_a_bad_since_is_refused(text):
    with pytest.raises(Exception, match="expected an age"):
        parse_since(text)


def test_the_postgres_fixture_fails_saying_how_to_install_postgresql_when_it_is_missing(monkeypatch, tmp_path):
    import postgres_server

    monkeypatch.setattr(postgres_server, "POSTGRES_ROOT", tmp_path)  # no versions installed there
    monkeypatch.setattr(postgres_server.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"not installed: `scripts/setup.sh --test` installs it"):
        postgres_server.pg_bin()


def test_a_full_usage_queue_drops_records_without_blocking_and_counts_them(realm_home: Path):
    registry = TenantRegistry()
    registry.create("acme")
    writer = UsageWriter(registry.db, capacity=1)
    first = UsageRecord("acme", "m", "completion", 200, 1, 1)
    holder = sqlite3.connect(realm_home / "realm.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the database is busy: the writer's insert waits
    writer.record(first)
    while writer._queue.qsize():  # the writer took it and waits on the lock
        threading.Event().wait(0.01)
    for _ in range(5):
        writer.record(first)  # one fits the queue (two if the writer's batch took one); the rest are dropped
    assert writer.dropped >= 3
    holder.execute("COMMIT")
    holder.close()
    writer.close()
    assert registry.usage("acme")["total"]["requests"] + writer.dropped == 6
