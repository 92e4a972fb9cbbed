"""The tenant registry, on both backends (SQLite under REALM_HOME, a real PostgreSQL): tenants, limits,
models, content-addressed modules in the database, atomic deployment."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from guest_helpers import TINY_LLAMA, wat_guest

from host_functions import settings
from host_functions.abi import Limits
from host_functions.engine.model import Model
from host_functions.errors import GuestError, TenantError
from realm import tenants
from realm.sandbox.intake import reference_guest_path, to_wasm
from realm.sandbox.run import TenantSandbox
from realm.tenants import TenantRegistry, parse_limits

EMITS = '(drop (call $emit (i32.const 100) (i32.const 1))) (i32.const 0)'
EMITS_A = wat_guest(EMITS, extra='(data (i32.const 100) "A")')
EMITS_B = wat_guest(EMITS, extra='(data (i32.const 100) "B")')


@pytest.fixture()
def registry(realm_home: Path, registry_url: str | None) -> TenantRegistry:
    return TenantRegistry()


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(TINY_LLAMA, backend="numpy")


def test_the_registry_lives_under_realm_home_by_default(realm_home):
    registry = TenantRegistry()
    registry.create("acme")
    assert registry.db.sqlite_path == realm_home / "realm.db" and registry.db.sqlite_path.is_file()
    assert settings.registry_url() == f"sqlite://{realm_home / 'realm.db'}"


def test_realm_home_defaults_to_the_users_data_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("REALM_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert settings.home() == tmp_path / "realm"
    assert TenantRegistry().db.sqlite_path == tmp_path / "realm" / "realm.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert settings.home() == Path.home() / ".local" / "share" / "realm"


def test_create_list_show_and_delete(registry):
    registry.create("beta")
    registry.create("alpha", parse_limits({"fuel": "1000", "wall_seconds": "2.5"}))
    assert [t.name for t in registry.list()] == ["alpha", "beta"]
    alpha = registry.get("alpha")
    assert (alpha.limits.fuel, alpha.limits.wall_seconds, alpha.module_sha256) == (1000, 2.5, None)
    registry.delete("alpha")
    assert [t.name for t in registry.list()] == ["beta"]
    with pytest.raises(TenantError, match="no tenant named 'alpha'"):
        registry.get("alpha")
    with pytest.raises(TenantError, match="no tenant named 'alpha'"):
        registry.delete("alpha")


def test_a_tenant_name_is_unique_and_well_formed(registry):
    registry.create("acme")
    with pytest.raises(TenantError, match="already exists"):
        registry.create("acme")
    for bad in ["", "-x", "a b", "x" * 65, "../etc", "é"]:
        with pytest.raises(TenantError, match="invalid tenant name"):
            registry.create(bad)


def test_a_tenants_models_are_stored_checked_replaced_and_deleted_with_it(registry):
    created = registry.create("acme", models=["tiny-llama", "gemma-3:270m", "tiny-llama"])
    assert created.models == registry.get("acme").models == ("gemma-3:270m", "tiny-llama")
    assert created.may_use("tiny-llama") and not created.may_use("qwen3")
    assert registry.set_models("acme", []).models == () and registry.get("acme").may_use("qwen3")
    for bad in ["", "a/b", "../x", "x" * 129, "é"]:
        with pytest.raises(TenantError, match="invalid model id"):
            registry.set_models("acme", [bad])
    registry.set_models("acme", ["qwen3"])
    registry.delete("acme")
    assert registry.create("acme").models == ()  # a new tenant of the same name starts with every model
    with pytest.raises(TenantError, match="no tenant named"):
        registry.set_models("ghost", ["qwen3"])


@pytest.mark.parametrize("overrides, message", [
    ({"fuels": "1"}, "unknown limit"), ({"fuel": "lots"}, "must be a number"), ({"fuel": "0"}, r"must be in \[1, "),
    ({"memory_bytes": str(4 << 30)}, "2 GiB")])
def test_bad_limits_are_rejected(overrides, message):
    with pytest.raises(TenantError, match=message):
        parse_limits(overrides)


def test_deploy_stores_the_module_by_content_hash_and_points_the_tenant_at_it(registry):
    registry.create("acme")
    data = reference_guest_path().read_bytes()
    tenant = registry.deploy("acme", data)
    digest = hashlib.sha256(data).hexdigest()
    assert (tenant.module_sha256, tenant.module_size) == (digest, len(data))
    assert registry.module_bytes(digest) == data
    assert registry.guest("acme").sha256 == digest


def test_wat_is_deployed_as_its_binary_form(registry):
    registry.create("acme")
    tenant = registry.deploy("acme", EMITS_A.encode())
    assert registry.module_bytes(tenant.module_sha256)[:4] == b"\0asm"
    assert tenant.module_sha256 == hashlib.sha256(to_wasm(EMITS_A.encode())).hexdigest()


def test_redeploying_switches_the_tenant_to_the_new_module(registry, model):
    registry.create("acme")
    registry.deploy("acme", EMITS_A.encode())
    assert TenantSandbox(model).run(registry.guest("acme"), {}).text == "A"
    registry.deploy("acme", EMITS_B.encode())
    assert TenantSandbox(model).run(registry.guest("acme"), {}).text == "B"


def test_a_rejected_module_leaves_the_old_one_serving(registry, model):
    registry.create("acme")
    registry.deploy("acme", EMITS_A.encode())
    for bad in [b"garbage", b"(module)", wat_guest("(i32.const 0)", pages=2000).encode()]:
        with pytest.raises(GuestError):
            registry.deploy("acme", bad)
    assert TenantSandbox(model).run(registry.guest("acme"), {}).text == "A"


def test_a_module_must_fit_the_tenants_memory_limit(registry):
    registry.create("small", Limits(memory_bytes=1 << 20))
    with pytest.raises(GuestError, match="over the tenant's limit"):
        registry.deploy("small", wat_guest("(i32.const 0)", pages=17).encode())


def test_deploying_to_an_unknown_tenant_writes_nothing(registry):
    with pytest.raises(TenantError, match="no tenant named"):
        registry.deploy("ghost", EMITS_A.encode())
    assert registry.module_bytes(hashlib.sha256(to_wasm(EMITS_A.encode())).hexdigest()) is None


def test_a_crash_while_deploying_leaves_the_tenant_on_its_old_module(registry, model, monkeypatch):
    registry.create("acme")
    old = registry.deploy("acme", EMITS_A.encode())

    def crash(tx, sha256):  # the last step of the deployment's transaction
        raise RuntimeError("power cut")

    monkeypatch.setattr(tenants, "_collect", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        registry.deploy("acme", EMITS_B.encode())
    monkeypatch.undo()
    assert registry.get("acme").module_sha256 == old.module_sha256
    assert registry.module_bytes(hashlib.sha256(to_wasm(EMITS_B.encode())).hexdigest()) is None
    assert TenantSandbox(model).run(registry.guest("acme"), {}).text == "A"


def test_a_module_no_tenant_serves_is_collected(registry):
    registry.create("acme")
    registry.create("beta")
    a = registry.deploy("acme", EMITS_A.encode()).module_sha256
    registry.deploy("beta", EMITS_A.encode())
    registry.deploy("acme", EMITS_B.encode())
    assert registry.module_bytes(a) is not None  # beta still serves it
    registry.delete("beta")
    assert registry.module_bytes(a) is None


def test_a_request_already_running_finishes_on_the_module_it_started_with(registry, model):
    twice_a = wat_guest("""(drop (call $emit (i32.const 100) (i32.const 1)))
      (drop (call $emit (i32.const 100) (i32.const 1))) (i32.const 0)""", extra='(data (i32.const 100) "A")')
    registry.create("acme")
    registry.deploy("acme", twice_a.encode())

    redeployed: list[bool] = []

    def redeploy_midway(text: str) -> None:  # runs inside the request's first emit
        if not redeployed:
            redeployed.append(bool(registry.deploy("acme", EMITS_B.encode())))

    assert TenantSandbox(model).run(registry.guest("acme"), {}, on_text=redeploy_midway).text == "AA"
    assert TenantSandbox(model).run(registry.guest("acme"), {}).text == "B"


def test_an_undeployed_tenant_has_no_guest(registry):
    registry.create("acme")
    with pytest.raises(TenantError, match="no deployed module"):
        registry.guest("acme")


def test_a_tampered_or_missing_module_is_refused_where_it_is_not_compiled_yet(registry, monkeypatch):
    registry.create("acme")
    tenant = registry.deploy("acme", EMITS_A.encode())
    monkeypatch.setattr(tenants, "compiled_guest", lambda sha256: None)  # as on a replica that never ran it
    with registry.db.transaction() as tx:
        tx.execute("UPDATE modules SET bytes = ? WHERE sha256 = ?", (to_wasm(EMITS_B.encode()), tenant.module_sha256))
    with pytest.raises(TenantError, match="corrupt"):
        registry.guest("acme")
    with registry.db.transaction() as tx:
        tx.execute("DELETE FROM modules WHERE sha256 = ?", (tenant.module_sha256,))
    with pytest.raises(TenantError, match="missing from the registry: redeploy"):
        registry.guest("acme")


def test_a_deleted_tenant_can_be_created_again_from_scratch(registry):
    registry.create("acme")
    registry.deploy("acme", EMITS_A.encode())
    registry.delete("acme")
    assert registry.create("acme").module_sha256 is None


def test_deployments_racing_on_a_shared_module_never_leave_a_tenant_without_its_module(registry):
    registry.create("acme")
    registry.create("beta")
    modules = [EMITS_A.encode(), EMITS_B.encode()]

    def flip(name: str, first: int) -> None:  # each deployment may collect the module the other just chose
        for i in range(12):
            TenantRegistry().deploy(name, modules[(i + first) % 2])

    threads = [threading.Thread(target=flip, args=(name, first)) for name, first in (("acme", 0), ("beta", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tenant in registry.list():
        assert registry.module_bytes(tenant.module_sha256) is not None
    with registry.db.transaction() as tx:
        assert len(tx.all("SELECT sha256 FROM modules")) == len({t.module_sha256 for t in registry.list()})
