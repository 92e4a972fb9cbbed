"""The registry's schema, as an ordered list of migrations: `schema_version` records each one applied.

Each migration runs in a transaction of its own that holds the database's lock (database.py), and
reads the version again under it, so two replicas starting at once apply each migration once. A
database whose version is newer than this code's last migration is refused (an older Realm would
misread it). Migration 1 is the schema the registry had before versions (CREATE TABLE IF NOT
EXISTS), so a realm.db made then is adopted as it is, its data kept.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from realm.registry.database import Database, RegistryError, Tx


def _tables(tx: Tx) -> None:
    tx.ddl("""CREATE TABLE IF NOT EXISTS tenants (
        name TEXT PRIMARY KEY, created_at {real} NOT NULL,
        limits TEXT NOT NULL,      -- JSON object of Limits fields
        module_sha256 TEXT,        -- NULL until the first deployment
        module_size {bigint}, deployed_at {real})""")
    # Only the SHA-256 of a key is stored (keys are 256 random bits: there is nothing to brute-force);
    # key_id is the key's public prefix, for list/revoke.
    tx.ddl("""CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
        created_at {real} NOT NULL, revoked_at {real})""")
    # NULL (or no row): the server's default.
    tx.ddl("""CREATE TABLE IF NOT EXISTS rate_limits (
        tenant TEXT PRIMARY KEY, requests_per_minute {bigint}, tokens_per_minute {bigint})""")
    tx.ddl("""CREATE TABLE IF NOT EXISTS lora_bindings (
        tenant TEXT NOT NULL, alias TEXT NOT NULL, path TEXT NOT NULL, scale {real} NOT NULL,
        PRIMARY KEY (tenant, alias))""")
    # No row: every model the server serves.
    tx.ddl("""CREATE TABLE IF NOT EXISTS tenant_models (
        tenant TEXT NOT NULL, model TEXT NOT NULL, PRIMARY KEY (tenant, model))""")


def _modules_and_usage(tx: Tx, db: Database) -> None:
    # Guest modules by content, in the database so a replica on any machine can fetch them.
    tx.ddl("""CREATE TABLE modules (
        sha256 TEXT PRIMARY KEY, size {bigint} NOT NULL, bytes {blob} NOT NULL, stored_at {real} NOT NULL)""")
    tx.ddl("""CREATE TABLE usage_records (
        id {id}, tenant TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL, status INTEGER NOT NULL,
        prompt_tokens {bigint} NOT NULL, completion_tokens {bigint} NOT NULL, cached_tokens {bigint} NOT NULL,
        at {real} NOT NULL)""")
    tx.ddl("CREATE INDEX usage_records_by_tenant ON usage_records (tenant, at)")
    _adopt_module_files(tx, db)


def _adopt_module_files(tx: Tx, db: Database) -> None:
    """A home made before modules lived in the database kept them as files next to realm.db:
    modules/<sha256>.wasm. Each one a tenant serves, and that is intact, moves into the table."""
    if db.sqlite_path is None:
        return
    folder = db.sqlite_path.parent / "modules"
    for row in tx.all("SELECT DISTINCT module_sha256 FROM tenants WHERE module_sha256 IS NOT NULL"):
        sha256 = row["module_sha256"]
        try:
            data = (folder / f"{sha256}.wasm").read_bytes()
        except OSError:
            continue  # gone already: its tenant is told to redeploy when it is asked for
        if hashlib.sha256(data).hexdigest() == sha256:
            tx.execute("INSERT INTO modules (sha256, size, bytes, stored_at) VALUES (?, ?, ?, ?)",
                       (sha256, len(data), data, time.time()))


MIGRATIONS: list[Callable[[Tx, Database], None]] = [
    lambda tx, db: _tables(tx),
    _modules_and_usage,
]
LATEST = len(MIGRATIONS)

def migrate(db: Database) -> None:
    """Bring `db` up to LATEST (once per Database object: once per process and URL with
    open_database); RegistryError if it is newer than this code."""
    if db.schema_current:
        return
    for version, step in enumerate(MIGRATIONS, 1):
        with db.transaction(lock=True) as tx:
            if _version(tx, db) < version:
                step(tx, db)
                tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))
    db.schema_current = True


def _version(tx: Tx, db: Database) -> int:
    tx.ddl("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at {real} NOT NULL)")
    row = tx.one("SELECT MAX(version) AS version FROM schema_version")
    version = int(row["version"] or 0) if row else 0
    if version > LATEST:
        raise RegistryError(f"the tenant registry {db.shown} has schema version {version}, newer than this "
                            f"Realm's {LATEST}: upgrade Realm (or use a registry of this version)")
    return version
