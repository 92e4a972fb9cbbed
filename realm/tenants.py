"""The tenant registry: tenants, their keys, limits, allowed models, adapters, deployed guest modules and
usage records, in the database the registry URL names (realm.registry: SQLite under REALM_HOME by
default, or PostgreSQL shared by every replica; docs/registry.md).

Modules are content-addressed: their bytes are stored in the database under their SHA-256, so a
replica on any machine fetches them; each machine keeps its own compiled forms (realm.sandbox.compiler).
Deployment is atomic. A new module is checked and compiled first (the tenant keeps serving its old
module meanwhile); then one transaction stores its bytes, points the tenant's row at its hash and
removes the old module if no tenant serves it any more. A crash at any point leaves the tenant on
either the old module or the new one, never on half of one.
"""

from __future__ import annotations

import builtins
import dataclasses
import decimal
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from realm.registry.database import Conflict, Row, Tx, open_database
from realm.registry.migrations import migrate
from realm.registry.usage import UsageWriter
from realm.registry.usage import report as usage_report
from realm.sandbox.intake import GuestModule, compile_guest, compiled_guest, to_wasm

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
NAME_RULE = "1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
# A model's id: what a request's `model` names (the file's stem unless the server names it).
MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}", re.ASCII)
MODEL_ID_RULE = "1-128 ASCII letters, digits, '.', '_', ':', '+' or '-', starting with a letter or digit"

KEY_PREFIX = "rk-"


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
    """Create, deploy, list, show and delete tenants, in the registry at `url` (default
    settings.registry_url()). Every method raises TenantError for user errors and RegistryError
    (realm.registry.database) when the database cannot be reached or used."""

    def __init__(self, url: str | None = None) -> None:
        self.db = open_database(url or settings.registry_url())

    def check(self) -> None:
        """Reach the database and bring its schema up to date; RegistryError if that fails."""
        migrate(self.db)

    # -- queries -------------------------------------------------------------------------------

    def get(self, name: str) -> Tenant:
        with self._db() as tx:
            return _tenant(self._row(tx, name), _models(tx, name))

    def list(self) -> list[Tenant]:
        with self._db() as tx:
            return [_tenant(r, _models(tx, r["name"])) for r in tx.all("SELECT * FROM tenants ORDER BY name")]

    def guest(self, name: str) -> GuestModule:
        """The tenant's deployed module, compiled (cached by hash: its bytes are read from the database
        only the first time); TenantError if none is deployed."""
        tenant = self.get(name)
        if tenant.module_sha256 is None:
            raise TenantError(f"tenant {name!r} has no deployed module (realm tenant deploy {name} FILE)")
        known = compiled_guest(tenant.module_sha256)
        if known is not None:
            return known
        data = self.module_bytes(tenant.module_sha256)
        if data is None:
            raise TenantError(f"the module of tenant {name!r} is missing from the registry: redeploy it")
        if hashlib.sha256(data).hexdigest() != tenant.module_sha256:
            raise TenantError(f"the module of tenant {name!r} is corrupt (hash mismatch): redeploy it")
        return compile_guest(data)

    def module_bytes(self, sha256: str) -> bytes | None:
        """The stored module with this SHA-256, or None."""
        with self._db() as tx:
            row = tx.one("SELECT bytes FROM modules WHERE sha256 = ?", (sha256,))
        return bytes(row["bytes"]) if row else None

    # -- changes -------------------------------------------------------------------------------

    def create(self, name: str, limits: Limits | None = None, models: Sequence[str] = ()) -> Tenant:
        """Register tenant `name` with `limits` and the `models` it may use (none: every model).
        TenantError for a bad name or model id, or a name already taken."""
        if not NAME_PATTERN.fullmatch(name):
            raise TenantError(f"invalid tenant name {name!r}: use {NAME_RULE}")
        tenant = Tenant(name, time.time(), (limits or Limits()).validate(), models=_model_ids(models))
        try:
            with self._db(lock=True) as tx:
                tx.execute("INSERT INTO tenants (name, created_at, limits) VALUES (?, ?, ?)",
                           (name, tenant.created_at, json.dumps(dataclasses.asdict(tenant.limits))))
                tx.executemany("INSERT INTO tenant_models (tenant, model) VALUES (?, ?)",
                               [(name, m) for m in tenant.models])
        except Conflict:
            raise TenantError(f"tenant {name!r} already exists") from None
        return tenant

    def set_models(self, name: str, models: Sequence[str]) -> Tenant:
        """Replace the models tenant `name` may use (none: every model the server serves); requests
        already running keep theirs. TenantError for an unknown tenant or a bad model id."""
        ids = _model_ids(models)
        with self._db(lock=True) as tx:
            tenant = _tenant(self._row(tx, name), ids)
            tx.execute("DELETE FROM tenant_models WHERE tenant = ?", (name,))
            tx.executemany("INSERT INTO tenant_models (tenant, model) VALUES (?, ?)", [(name, m) for m in ids])
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
        with self._db(lock=True) as tx:  # the lock orders this against a delete collecting the module
            tx.execute("INSERT INTO modules (sha256, size, bytes, stored_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (sha256) DO NOTHING", (guest.sha256, guest.size, wasm, time.time()))
            cur = tx.execute("UPDATE tenants SET module_sha256 = ?, module_size = ?, deployed_at = ? WHERE name = ?",
                             (guest.sha256, guest.size, time.time(), name))
            if cur.rowcount != 1:
                raise TenantError(f"tenant {name!r} was deleted during deployment")
            _collect(tx, tenant.module_sha256)
        return self.get(name)

    def set_limits(self, name: str, overrides: Mapping[str, str]) -> Tenant:
        """Change some of a tenant's limits (NAME=VALUE text, as parse_limits reads it); the others stay.

        Raises TenantError for an unknown tenant or a bad limit, and GuestError if the deployed
        module no longer fits (its initial memory over a lowered memory_bytes).
        """
        with self._db(lock=True) as tx:
            tenant = _tenant(self._row(tx, name), _models(tx, name))
            limits = parse_limits(overrides, tenant.limits)
            if tenant.module_sha256 is not None and limits.memory_bytes < tenant.limits.memory_bytes:
                _check_fits(self.guest(name), limits)
            tx.execute("UPDATE tenants SET limits = ? WHERE name = ?", (json.dumps(dataclasses.asdict(limits)), name))
        return dataclasses.replace(tenant, limits=limits)

    def delete(self, name: str) -> None:
        """Delete a tenant, its keys, limits, models, adapters and usage records, and its module unless
        another tenant serves the same one. Raises TenantError if there is no such tenant."""
        with self._db(lock=True) as tx:
            sha256 = self._row(tx, name)["module_sha256"]
            tx.execute("DELETE FROM tenants WHERE name = ?", (name,))
            # A tenant created later under the same name must not inherit any of these.
            for table in ("api_keys", "rate_limits", "lora_bindings", "tenant_models", "usage_records"):
                tx.execute(f"DELETE FROM {table} WHERE tenant = ?", (name,))  # table: one of these names
            _collect(tx, sha256)

    # -- API keys ------------------------------------------------------------------------------

    def create_key(self, name: str) -> tuple[ApiKey, str]:
        """A new random key for tenant `name`: (its record, the key). The key is not stored, only
        its hash, so this is the one time it can be shown. TenantError if there is no such tenant."""
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, time.time())
        with self._db(lock=True) as tx:
            self._row(tx, name)
            tx.execute("INSERT INTO api_keys (key_id, tenant, sha256, created_at) VALUES (?, ?, ?, ?)",
                       (key_id, name, hash_key(key), record.created_at))
        return record, key

    def list_keys(self, name: str) -> builtins.list[ApiKey]:
        """Tenant `name`'s keys, revoked ones included; TenantError if there is no such tenant."""
        with self._db() as tx:
            self._row(tx, name)
            rows = tx.all("SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_at", (name,))
        return [_api_key(r) for r in rows]

    def revoke_key(self, name: str, key_id: str) -> ApiKey:
        """Revoke tenant `name`'s key `key_id` (the id `list_keys` shows, or the whole key) at once."""
        key_id = key_id.removeprefix(KEY_PREFIX).split("-", 1)[0]
        with self._db(lock=True) as tx:
            cur = tx.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND tenant = ? "
                             "AND revoked_at IS NULL", (time.time(), key_id, name))
            changed = cur.rowcount
            row = tx.one("SELECT * FROM api_keys WHERE key_id = ? AND tenant = ?", (key_id, name))
        if row is None:
            raise TenantError(f"tenant {name!r} has no key {key_id!r}")
        if changed != 1:
            raise TenantError(f"key {key_id} of tenant {name!r} is already revoked")
        return _api_key(row)

    def tenant_for_key(self, key: str) -> tuple[Tenant, RateLimits]:
        """The tenant a key belongs to and its rate limits, read at once; AuthError if the key is
        unknown or revoked, or its tenant gone."""
        with self._db() as tx:
            row = tx.one("SELECT * FROM api_keys WHERE sha256 = ?", (hash_key(key),))
            if row is None:
                raise AuthError("invalid API key")
            if row["revoked_at"] is not None:
                raise AuthError("this API key has been revoked")
            try:
                tenant = _tenant(self._row(tx, row["tenant"]), _models(tx, row["tenant"]))
            except TenantError:
                raise AuthError("the tenant of this API key no longer exists") from None
            return tenant, _rate_limits(tx, tenant.name)

    # -- rate limits ---------------------------------------------------------------------------

    def rate_limits(self, name: str) -> RateLimits:
        """Tenant `name`'s rate limits (None fields: the server's defaults)."""
        with self._db() as tx:
            return _rate_limits(tx, name)

    def set_rate_limits(self, name: str, limits: RateLimits) -> RateLimits:
        """Replace tenant `name`'s rate limits; TenantError for an unknown tenant or a negative limit."""
        for value in (limits.requests_per_minute, limits.tokens_per_minute):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise TenantError(f"rate limits must be integers >= 0 (0: unlimited), got {value!r}")
        with self._db(lock=True) as tx:
            self._row(tx, name)
            tx.execute("INSERT INTO rate_limits (tenant, requests_per_minute, tokens_per_minute) VALUES (?, ?, ?) "
                       "ON CONFLICT (tenant) DO UPDATE SET requests_per_minute = excluded.requests_per_minute, "
                       "tokens_per_minute = excluded.tokens_per_minute",
                       (name, limits.requests_per_minute, limits.tokens_per_minute))
        return limits

    # -- LoRA adapters -------------------------------------------------------------------------

    def adapters(self, name: str) -> dict[str, AdapterBinding]:
        """Tenant `name`'s LoRA adapters by alias; TenantError for an unknown tenant."""
        with self._db() as tx:
            self._row(tx, name)
            rows = tx.all("SELECT alias, path, scale FROM lora_bindings WHERE tenant = ? ORDER BY alias", (name,))
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
        with self._db(lock=True) as tx:
            self._row(tx, name)
            tx.execute("INSERT INTO lora_bindings (tenant, alias, path, scale) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (tenant, alias) DO UPDATE SET path = excluded.path, scale = excluded.scale",
                       (name, alias, str(resolved), scale))
        return AdapterBinding(str(resolved), scale)

    def unset_lora(self, name: str, alias: str | None = None) -> builtins.list[str]:
        """Unbind tenant `name`'s adapter `alias` (all of them if None); returns the aliases removed.
        TenantError for an unknown tenant or alias."""
        with self._db(lock=True) as tx:
            self._row(tx, name)
            where, args = ("tenant = ?", (name,)) if alias is None else ("tenant = ? AND alias = ?", (name, alias))
            removed = [r["alias"] for r in tx.all(f"SELECT alias FROM lora_bindings WHERE {where}", args)]
            if alias is not None and not removed:
                raise TenantError(f"tenant {name!r} has no adapter bound as {alias!r}")
            tx.execute(f"DELETE FROM lora_bindings WHERE {where}", args)
        return removed

    # -- usage ---------------------------------------------------------------------------------

    def usage_writer(self, on_drop: Callable[[int], None] = lambda n: None) -> UsageWriter:
        """A writer of this registry's usage records (a thread of its own: close it when done)."""
        self.check()
        return UsageWriter(self.db, on_drop)

    def usage(self, name: str, since: float | None = None) -> dict[str, Any]:
        """Tenant `name`'s usage since `since` (Unix time): totals and per model; TenantError for an
        unknown tenant."""
        with self._db() as tx:
            self._row(tx, name)
            return usage_report(tx, name, since)

    # -- storage -------------------------------------------------------------------------------

    @staticmethod
    def _row(tx: Tx, name: str) -> Row:
        row = tx.one("SELECT * FROM tenants WHERE name = ?", (name,))
        if row is None:
            raise TenantError(f"no tenant named {name!r}")
        return row

    @contextmanager
    def _db(self, lock: bool = False) -> Iterator[Tx]:
        migrate(self.db)
        with self.db.transaction(lock) as tx:
            yield tx


def _collect(tx: Tx, sha256: str | None) -> None:
    """Remove the module if no tenant serves it any more (inside the locking transaction, so a deploy
    of the same module waits for it and then stores it again)."""
    if sha256 is not None:
        tx.execute("DELETE FROM modules WHERE sha256 = ? AND NOT EXISTS "
                   "(SELECT 1 FROM tenants WHERE module_sha256 = ?)", (sha256, sha256))


def _rate_limits(tx: Tx, name: str) -> RateLimits:
    row = tx.one("SELECT * FROM rate_limits WHERE tenant = ?", (name,))
    return RateLimits(row["requests_per_minute"], row["tokens_per_minute"]) if row else RateLimits()


def _tenant(row: Row, models: tuple[str, ...]) -> Tenant:
    try:
        limits = dataclasses.replace(Limits(), **json.loads(row["limits"]))
    except (TypeError, ValueError) as exc:
        raise TenantError(f"tenant {row['name']!r} has unreadable limits: {exc}") from None
    return Tenant(row["name"], row["created_at"], limits, row["module_sha256"], row["module_size"],
                  row["deployed_at"], models)


def _models(tx: Tx, name: str) -> tuple[str, ...]:
    return tuple(r["model"] for r in tx.all("SELECT model FROM tenant_models WHERE tenant = ? ORDER BY model", (name,)))


def _model_ids(models: Sequence[str]) -> tuple[str, ...]:
    """The distinct model ids, sorted; TenantError for one that is not an id."""
    for model in models:
        if not isinstance(model, str) or not MODEL_ID_PATTERN.fullmatch(model):
            raise TenantError(f"invalid model id {str(model)[:140]!r}: use {MODEL_ID_RULE}")
    return tuple(sorted(set(models)))


def _api_key(row: Row) -> ApiKey:
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
