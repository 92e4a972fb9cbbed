"""The tenant registry: tenants, their deployed guest modules and limits, in SQLite under REALM_HOME.

Under the home directory (host_functions.settings.home(): $REALM_HOME, else the user's data directory):
    realm.db     the registry (SQLite)
    modules/     deployed guest modules, named by the SHA-256 of their bytes
    compiled/    their compiled forms, kept by realm.sandbox.compiler

Deployment is atomic. A new module is checked and compiled first (the tenant keeps serving its old
module meanwhile); then its bytes are written to modules/<sha256>.wasm through a temporary file,
fsync and rename; only then does one transaction point the tenant's row at the new hash. A crash
at any point leaves the tenant on either the old module or the new one, never on half of one.
"""

from __future__ import annotations

import builtins
import dataclasses
import decimal
import hashlib
import json
import math
import os
import re
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from host_functions import settings
from host_functions.abi import MEMORY_EXPORT, AdapterBinding, Limits
from host_functions.abi.adapters import MAX_SCALE as MAX_ADAPTER_SCALE
from host_functions.abi.limits import LIMIT_RANGES
from host_functions.errors import AdapterError, AuthError, GuestError, TenantError
from host_functions.lora.adapter import check_adapter_source
from realm.sandbox.intake import GuestModule, compile_guest, to_wasm

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
NAME_RULE = "1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
# A model's id: what a request's `model` names (the file's stem unless the server names it).
MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}", re.ASCII)
MODEL_ID_RULE = "1-128 ASCII letters, digits, '.', '_', ':', '+' or '-', starting with a letter or digit"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name          TEXT PRIMARY KEY,
    created_at    REAL NOT NULL,
    limits        TEXT NOT NULL,   -- JSON object of Limits fields
    module_sha256 TEXT,            -- NULL until the first deployment
    module_size   INTEGER,
    deployed_at   REAL
)
"""

# API keys: only the SHA-256 of a key is stored (keys are 256 random bits, so a plain hash is
# enough: there is nothing to brute-force). key_id is the key's public prefix, for list/revoke.
_KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    sha256     TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
)
"""
KEY_PREFIX = "rk-"

# Per-tenant HTTP rate limits for `realm serve`; NULL (or no row) means the server's default.
_RATES_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_limits (
    tenant              TEXT PRIMARY KEY,
    requests_per_minute INTEGER,
    tokens_per_minute   INTEGER
)
"""
# A tenant's LoRA adapters by alias (`realm tenant set-lora`): the file or folder and its default scale.
_LORA_SCHEMA = """
CREATE TABLE IF NOT EXISTS lora_bindings (
    tenant TEXT NOT NULL,
    alias  TEXT NOT NULL,
    path   TEXT NOT NULL,
    scale  REAL NOT NULL,
    PRIMARY KEY (tenant, alias)
)
"""
# The models a tenant may use, by id; a tenant with no row may use every model the server serves.
_MODELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenant_models (
    tenant TEXT NOT NULL,
    model  TEXT NOT NULL,
    PRIMARY KEY (tenant, model)
)
"""


@dataclass(frozen=True)
class Tenant:
    """One tenant as registered: its limits, the module it serves (if deployed) and the models it may
    use (empty: every model the server serves)."""

    name: str
    created_at: float
    limits: Limits
    module_sha256: str | None = None
    module_size: int | None = None
    deployed_at: float | None = None
    models: tuple[str, ...] = ()

    def may_use(self, model_id: str) -> bool:
        return not self.models or model_id in self.models

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at, "module_sha256": self.module_sha256,
                "module_size": self.module_size, "deployed_at": self.deployed_at, "models": list(self.models),
                "limits": {k: _json_number(v) for k, v in dataclasses.asdict(self.limits).items()}}


@dataclass(frozen=True)
class ApiKey:
    """A tenant's API key as stored: its public id and dates, never the key itself."""

    key_id: str
    tenant: str
    created_at: float
    revoked_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RateLimits:
    """A tenant's rate limits for the HTTP server; None: the server's default, 0: unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_limits(overrides: Mapping[str, str], base: Limits | None = None) -> Limits:
    """Limits with NAME=VALUE overrides applied (e.g. from the command line).

    Raises TenantError for an unknown name, a value that is not a number (or not an integer where
    the limit counts something), and a value out of the limit's range.
    """
    values: dict[str, Any] = {}
    for name, text in overrides.items():
        if name not in LIMIT_RANGES:
            raise TenantError(f"unknown limit {name!r} (known: {', '.join(LIMIT_RANGES)})")
        values[name] = _limit_value(name, text)
    try:
        return dataclasses.replace(base or Limits(), **values).validate()
    except GuestError as exc:
        raise TenantError(str(exc)) from None


def _limit_value(name: str, text: str) -> int | float:
    """The number NAME=TEXT means: a float for a time, an integer for a count ("1e9" is one)."""
    try:
        number = decimal.Decimal(text.strip().replace("_", ""))
    except decimal.InvalidOperation:
        raise TenantError(f"limit {name} must be a number, got {text!r}") from None
    if not number.is_finite():
        raise TenantError(f"limit {name} must be a finite number, got {text!r}")
    kind, low, high = LIMIT_RANGES[name]
    if number.adjusted() > 30:  # out of every range, and 1e999999 would make a million-digit integer
        raise TenantError(f"limit {name} must be in [{low:g}, {high:g}], got {text!r}")
    if kind is float:
        return float(number)
    if number != number.to_integral_value():
        raise TenantError(f"limit {name} must be an integer, got {text!r}")
    return int(number)


class TenantRegistry:
    """Create, deploy, list, show and delete tenants; every method raises TenantError for user errors."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or settings.home()
        self.db_path = self.home / "realm.db"
        self.modules = self.home / "modules"

    # -- queries -------------------------------------------------------------------------------

    def get(self, name: str) -> Tenant:
        with self._db() as db:
            return _tenant(self._row(db, name), _models(db, name))

    def list(self) -> list[Tenant]:
        with self._db() as db:
            return [_tenant(r, _models(db, r["name"])) for r in db.execute("SELECT * FROM tenants ORDER BY name")]

    def guest(self, name: str) -> GuestModule:
        """The tenant's deployed module, compiled (cached by hash); TenantError if none is deployed."""
        tenant = self.get(name)
        if tenant.module_sha256 is None:
            raise TenantError(f"tenant {name!r} has no deployed module (realm tenant deploy {name} FILE)")
        path = self.module_path(tenant.module_sha256)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TenantError(f"module of tenant {name!r} is unreadable: {exc}") from None
        if hashlib.sha256(data).hexdigest() != tenant.module_sha256:
            raise TenantError(f"module file of tenant {name!r} is corrupt (hash mismatch): redeploy it")
        return compile_guest(data)

    def module_path(self, sha256: str) -> Path:
        return self.modules / f"{sha256}.wasm"

    # -- changes -------------------------------------------------------------------------------

    def create(self, name: str, limits: Limits | None = None, models: Sequence[str] = ()) -> Tenant:
        """Register tenant `name` with `limits` and the `models` it may use (none: every model).
        TenantError for a bad name or model id, or a name already taken."""
        if not NAME_PATTERN.fullmatch(name):
            raise TenantError(f"invalid tenant name {name!r}: use {NAME_RULE}")
        tenant = Tenant(name, time.time(), (limits or Limits()).validate(), models=_model_ids(models))
        try:
            with self._db(write=True) as db:
                db.execute("INSERT INTO tenants (name, created_at, limits) VALUES (?, ?, ?)",
                           (name, tenant.created_at, json.dumps(dataclasses.asdict(tenant.limits))))
                db.executemany("INSERT INTO tenant_models VALUES (?, ?)", [(name, m) for m in tenant.models])
        except sqlite3.IntegrityError:
            raise TenantError(f"tenant {name!r} already exists") from None
        return tenant

    def set_models(self, name: str, models: Sequence[str]) -> Tenant:
        """Replace the models tenant `name` may use (none: every model the server serves); requests
        already running keep theirs. TenantError for an unknown tenant or a bad model id."""
        ids = _model_ids(models)
        with self._db(write=True) as db:
            tenant = _tenant(self._row(db, name), ids)
            db.execute("DELETE FROM tenant_models WHERE tenant = ?", (name,))
            db.executemany("INSERT INTO tenant_models VALUES (?, ?)", [(name, m) for m in ids])
        return tenant

    def deploy(self, name: str, data: bytes) -> Tenant:
        """Check, compile and store a module (binary or WAT), then switch the tenant to it atomically.

        Raises GuestError if the module is rejected (the tenant keeps its old module) and
        TenantError if the tenant does not exist.
        """
        tenant = self.get(name)
        wasm = to_wasm(data)
        guest = compile_guest(wasm)
        _check_fits(guest, tenant.limits)
        with self._db(write=True) as db:  # the write lock orders this against a delete collecting files
            self._store_module(guest.sha256, wasm)
            cur = db.execute("UPDATE tenants SET module_sha256 = ?, module_size = ?, deployed_at = ? WHERE name = ?",
                             (guest.sha256, guest.size, time.time(), name))
            if cur.rowcount != 1:
                raise TenantError(f"tenant {name!r} was deleted during deployment")
            self._collect(db, tenant.module_sha256)
        return self.get(name)

    def set_limits(self, name: str, overrides: Mapping[str, str]) -> Tenant:
        """Change some of a tenant's limits (NAME=VALUE text, as parse_limits reads it); the others stay.

        Raises TenantError for an unknown tenant or a bad limit, and GuestError if the deployed
        module no longer fits (its initial memory over a lowered memory_bytes).
        """
        with self._db(write=True) as db:
            tenant = _tenant(self._row(db, name), _models(db, name))
            limits = parse_limits(overrides, tenant.limits)
            if tenant.module_sha256 is not None and limits.memory_bytes < tenant.limits.memory_bytes:
                _check_fits(self.guest(name), limits)
            db.execute("UPDATE tenants SET limits = ? WHERE name = ?",
                       (json.dumps(dataclasses.asdict(limits)), name))
        return dataclasses.replace(tenant, limits=limits)

    def delete(self, name: str) -> None:
        """Delete a tenant, and its module file unless another tenant serves the same module.

        Raises TenantError if there is no such tenant.
        """
        with self._db(write=True) as db:
            sha256 = self._row(db, name)["module_sha256"]
            db.execute("DELETE FROM tenants WHERE name = ?", (name,))
            # A tenant created later under the same name must not inherit these keys or limits.
            db.execute("DELETE FROM api_keys WHERE tenant = ?", (name,))
            db.execute("DELETE FROM rate_limits WHERE tenant = ?", (name,))
            db.execute("DELETE FROM lora_bindings WHERE tenant = ?", (name,))
            db.execute("DELETE FROM tenant_models WHERE tenant = ?", (name,))
            self._collect(db, sha256)

    # -- API keys ------------------------------------------------------------------------------

    def create_key(self, name: str) -> tuple[ApiKey, str]:
        """A new random key for tenant `name`: (its record, the key). The key is not stored, only
        its hash, so this is the one time it can be shown. TenantError if there is no such tenant."""
        self.get(name)
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, time.time())
        with self._db(write=True) as db:
            if db.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone() is None:
                raise TenantError(f"no tenant named {name!r}")
            db.execute("INSERT INTO api_keys (key_id, tenant, sha256, created_at) VALUES (?, ?, ?, ?)",
                       (key_id, name, hash_key(key), record.created_at))
        return record, key

    def list_keys(self, name: str) -> builtins.list[ApiKey]:
        """Tenant `name`'s keys, revoked ones included; TenantError if there is no such tenant."""
        self.get(name)
        with self._db() as db:
            rows = db.execute("SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_at", (name,)).fetchall()
        return [_api_key(r) for r in rows]

    def revoke_key(self, name: str, key_id: str) -> ApiKey:
        """Revoke tenant `name`'s key `key_id` (the id `list_keys` shows, or the whole key) at once."""
        key_id = key_id.removeprefix(KEY_PREFIX).split("-", 1)[0]
        with self._db(write=True) as db:
            cur = db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND tenant = ? "
                             "AND revoked_at IS NULL", (time.time(), key_id, name))
            row = db.execute("SELECT * FROM api_keys WHERE key_id = ? AND tenant = ?", (key_id, name)).fetchone()
        if row is None:
            raise TenantError(f"tenant {name!r} has no key {key_id!r}")
        if cur.rowcount != 1:
            raise TenantError(f"key {key_id} of tenant {name!r} is already revoked")
        return _api_key(row)

    def tenant_for_key(self, key: str) -> Tenant:
        """The tenant a key belongs to; AuthError if the key is unknown or revoked, or its tenant gone."""
        with self._db() as db:
            row = db.execute("SELECT * FROM api_keys WHERE sha256 = ?", (hash_key(key),)).fetchone()
        if row is None:
            raise AuthError("invalid API key")
        if row["revoked_at"] is not None:
            raise AuthError("this API key has been revoked")
        try:
            return self.get(row["tenant"])
        except TenantError:
            raise AuthError("the tenant of this API key no longer exists") from None

    # -- rate limits ---------------------------------------------------------------------------

    def rate_limits(self, name: str) -> RateLimits:
        """Tenant `name`'s rate limits (None fields: the server's defaults)."""
        with self._db() as db:
            row = db.execute("SELECT * FROM rate_limits WHERE tenant = ?", (name,)).fetchone()
        return RateLimits(row["requests_per_minute"], row["tokens_per_minute"]) if row else RateLimits()

    def set_rate_limits(self, name: str, limits: RateLimits) -> RateLimits:
        """Replace tenant `name`'s rate limits; TenantError for an unknown tenant or a negative limit."""
        for value in (limits.requests_per_minute, limits.tokens_per_minute):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise TenantError(f"rate limits must be integers >= 0 (0: unlimited), got {value!r}")
        with self._db(write=True) as db:
            if db.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone() is None:
                raise TenantError(f"no tenant named {name!r}")
            db.execute("INSERT OR REPLACE INTO rate_limits VALUES (?, ?, ?)",
                       (name, limits.requests_per_minute, limits.tokens_per_minute))
        return limits

    # -- LoRA adapters -------------------------------------------------------------------------

    def adapters(self, name: str) -> dict[str, AdapterBinding]:
        """Tenant `name`'s LoRA adapters by alias; TenantError for an unknown tenant."""
        with self._db() as db:
            self._row(db, name)
            rows = db.execute("SELECT alias, path, scale FROM lora_bindings WHERE tenant = ? ORDER BY alias",
                              (name,)).fetchall()
        return {row["alias"]: AdapterBinding(row["path"], row["scale"]) for row in rows}

    def set_lora(self, name: str, path: str | Path, scale: float = 1.0, alias: str = "default") -> AdapterBinding:
        """Bind a LoRA adapter (GGUF file or PEFT folder) to tenant `name` as `alias`, replacing one bound
        there before; requests already running keep what they started with. TenantError for an unknown
        tenant, a bad alias or scale, or a file that is not a LoRA adapter."""
        if not NAME_PATTERN.fullmatch(alias):
            raise TenantError(f"invalid adapter alias {alias!r}: {NAME_RULE}")
        if not math.isfinite(scale) or abs(scale) > MAX_ADAPTER_SCALE:
            raise TenantError(f"the adapter scale must be finite and within +-{MAX_ADAPTER_SCALE:g}, got {scale}")
        try:
            resolved = check_adapter_source(path)
        except AdapterError as exc:
            raise TenantError(str(exc)) from None
        with self._db(write=True) as db:
            self._row(db, name)
            db.execute("INSERT OR REPLACE INTO lora_bindings VALUES (?, ?, ?, ?)", (name, alias, str(resolved), scale))
        return AdapterBinding(str(resolved), scale)

    def unset_lora(self, name: str, alias: str | None = None) -> builtins.list[str]:
        """Unbind tenant `name`'s adapter `alias` (all of them if None); returns the aliases removed.
        TenantError for an unknown tenant or alias."""
        with self._db(write=True) as db:
            self._row(db, name)
            where, args = ("tenant = ?", (name,)) if alias is None else ("tenant = ? AND alias = ?", (name, alias))
            removed = [r["alias"] for r in db.execute(f"SELECT alias FROM lora_bindings WHERE {where}", args)]
            if alias is not None and not removed:
                raise TenantError(f"tenant {name!r} has no adapter bound as {alias!r}")
            db.execute(f"DELETE FROM lora_bindings WHERE {where}", args)
        return removed

    # -- storage -------------------------------------------------------------------------------

    @staticmethod
    def _row(db: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM tenants WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise TenantError(f"no tenant named {name!r}")
        return row

    def _collect(self, db: sqlite3.Connection, sha256: str | None) -> None:
        """Remove modules/<sha256>.wasm if no tenant serves it any more (inside the write transaction,
        so a deploy of the same module waits for it and then writes the file again)."""
        if sha256 is None or db.execute("SELECT 1 FROM tenants WHERE module_sha256 = ?", (sha256,)).fetchone():
            return
        try:
            self.module_path(sha256).unlink(missing_ok=True)
        except OSError as exc:
            raise TenantError(f"cannot remove the unused module {self.module_path(sha256)}: {exc}") from None

    def _store_module(self, sha256: str, wasm: bytes) -> None:
        """Write modules/<sha256>.wasm atomically (content-addressed: an existing file is this one)."""
        target = self.module_path(sha256)
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
            return
        try:
            self.modules.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.modules, prefix=".deploy-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(wasm)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(self.modules)
        except OSError as exc:
            raise TenantError(f"cannot store the module under {self.modules}: {exc}") from None

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise TenantError(f"cannot open the tenant registry {self.db_path}: {exc}") from None
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(_SCHEMA)
            db.execute(_KEYS_SCHEMA)
            db.execute(_RATES_SCHEMA)
            db.execute(_LORA_SCHEMA)
            db.execute(_MODELS_SCHEMA)
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise TenantError(f"tenant registry {self.db_path}: {exc}") from None
        finally:
            db.close()


def _tenant(row: sqlite3.Row, models: tuple[str, ...]) -> Tenant:
    try:
        limits = dataclasses.replace(Limits(), **json.loads(row["limits"]))
    except (TypeError, ValueError) as exc:
        raise TenantError(f"tenant {row['name']!r} has unreadable limits: {exc}") from None
    return Tenant(row["name"], row["created_at"], limits, row["module_sha256"], row["module_size"],
                  row["deployed_at"], models)


def _models(db: sqlite3.Connection, name: str) -> tuple[str, ...]:
    return tuple(r["model"] for r in db.execute("SELECT model FROM tenant_models WHERE tenant = ? ORDER BY model",
                                                (name,)))


def _model_ids(models: Sequence[str]) -> tuple[str, ...]:
    """The distinct model ids, sorted; TenantError for one that is not an id."""
    for model in models:
        if not isinstance(model, str) or not MODEL_ID_PATTERN.fullmatch(model):
            raise TenantError(f"invalid model id {str(model)[:140]!r}: use {MODEL_ID_RULE}")
    return tuple(sorted(set(models)))


def _api_key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(row["key_id"], row["tenant"], row["created_at"], row["revoked_at"])


def _json_number(value: int | float) -> int | float | str:
    # A limit stored before limits were validated may be inf or nan, which JSON cannot carry.
    return value if math.isfinite(value) else str(value)


def _check_fits(guest: GuestModule, limits: Limits) -> None:
    for export in guest.module.exports:
        if export.name == MEMORY_EXPORT and isinstance(export.type, wasmtime.MemoryType):
            pages = export.type.limits.min
            if pages * 65536 > limits.memory_bytes:
                raise GuestError(f"module needs {pages * 65536} bytes of memory at start, over the tenant's "
                                 f"limit of {limits.memory_bytes}")


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

