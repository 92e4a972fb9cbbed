"""`realm tenant create|deploy|list|show|delete|usage`, and `realm run --tenant`, as a user runs them; the
tests taking `registry` run on both backends (SQLite in REALM_HOME, a real PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cli_helpers import one_error_line
from oracle import DATA

from realm.registry.database import Database
from realm.registry.usage import UsageRecord
from realm.tenants import TenantRegistry

TINY = str(DATA / "tiny-llama-F32.gguf")
GENERATE = Path(__file__).resolve().parent.parent / "guest" / "generate.wasm"
WRONG_SIGNATURE = """(module (import "realm" "forward_layer" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "realm_main") (param i32 i32) (result i32) (i32.const 0)))"""
SPIN = """(module (memory (export "memory") 1)
  (func (export "realm_alloc") (param i32) (result i32) (i32.const 64))
  (func (export "realm_main") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0)))"""


@pytest.fixture
def registry(realm_env: dict[str, str], registry_url: str | None, tmp_path: Path) -> str:
    """The URL of the test's registry, on each backend in turn; its `realm` processes use it."""
    if registry_url:
        realm_env["REALM_REGISTRY_URL"] = registry_url
    return registry_url or f"sqlite://{tmp_path / 'home' / 'realm.db'}"


def test_a_tenants_life_from_create_to_delete(realm, tmp_path, registry):
    assert realm("tenant", "create", "acme").stdout.strip() == "created tenant acme"
    assert json.loads(realm("tenant", "list", "--json").stdout)[0]["module_sha256"] is None

    deployed = realm("tenant", "deploy", "acme", str(GENERATE))
    assert deployed.returncode == 0, deployed.stderr
    digest = hashlib.sha256(GENERATE.read_bytes()).hexdigest()
    assert digest in deployed.stdout
    shown = json.loads(realm("tenant", "show", "acme", "--json").stdout)
    assert shown["module_sha256"] == digest and shown["limits"]["max_sequences"] == 16
    assert "acme" in realm("tenant", "list").stdout and digest[:16] in realm("tenant", "show", "acme").stdout

    run = realm("run", "Once upon a time", "-m", TINY, "-b", "numpy", "--tenant", "acme", "--temperature", "0",
                "--max-tokens", "5", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["guest"] == "tenant acme"

    bad = tmp_path / "bad.wat"
    bad.write_text(WRONG_SIGNATURE)
    rejected = realm("tenant", "deploy", "acme", str(bad))
    assert rejected.returncode == 1 and "Traceback" not in rejected.stderr
    assert rejected.stderr.strip() == ("Error: import realm.forward_layer: signature (i32) -> (i32) does not match "
                                       "the ABI's (i32, i32) -> (i32)")
    assert json.loads(realm("tenant", "show", "acme", "--json").stdout)["module_sha256"] == digest

    assert realm("tenant", "delete", "acme").stdout.strip() == "deleted tenant acme"
    assert json.loads(realm("tenant", "list", "--json").stdout) == []


def test_a_tenants_limits_end_its_runaway_guest(realm, tmp_path):
    spin = tmp_path / "spin.wat"
    spin.write_text(SPIN)
    assert realm("tenant", "create", "loop", "--limit", "fuel=1000000").returncode == 0
    assert realm("tenant", "deploy", "loop", str(spin)).returncode == 0
    done = realm("run", "x", "-m", TINY, "-b", "numpy", "--tenant", "loop")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "Error: guest used up its CPU budget of 1000000 fuel"


def test_tenant_errors_are_one_line(realm, registry):
    realm("tenant", "create", "acme")
    for args, message in ((["create", "acme"], "Error: tenant 'acme' already exists"),
                          (["create", "bad name"], "Error: invalid tenant name 'bad name'"),
                          (["show", "ghost"], "Error: no tenant named 'ghost'"),
                          (["delete", "ghost"], "Error: no tenant named 'ghost'"),
                          (["create", "x", "--limit", "speed=9"], "Error: unknown limit 'speed'")):
        done = realm("tenant", *args)
        assert done.returncode == 1 and done.stderr.startswith(message), (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("limit,message", [
    ("wall_seconds=inf", "limit wall_seconds must be a finite number, got 'inf'"),
    ("wall_seconds=nan", "limit wall_seconds must be a finite number, got 'nan'"),
    ("fuel=-Infinity", "limit fuel must be a finite number"),
    ("max_tokens=1.5", "limit max_tokens must be an integer, got '1.5'"),
    ("max_tokens=ten", "limit max_tokens must be a number, got 'ten'"),
    ("max_tokens=0", "limit max_tokens must be in [1, 2.14748e+09], got 0"),
    ("memory_bytes=1e400", "limit memory_bytes must be in [1, 2.14748e+09], got '1e400'"),
    ("fuel=1e999999999", "limit fuel must be in"),
    ("wall_seconds=1e9", "limit wall_seconds must be in [0.001, 604800]"),
    ("max_sequences=", "limit max_sequences must be a number, got ''"),
])
def test_limits_are_validated_at_create(realm, limit, message):
    one_error_line(realm("tenant", "create", "acme", "--limit", limit), 1, message)
    assert json.loads(realm("tenant", "list", "--json").stdout) == []


def test_integral_limits_may_be_written_in_any_exact_notation(realm):
    assert realm("tenant", "create", "acme", "--limit", "fuel=1e9", "--limit", "max_tokens=4_096").returncode == 0
    limits = json.loads(realm("tenant", "show", "acme", "--json").stdout)["limits"]
    assert limits["fuel"] == 1_000_000_000 and limits["max_tokens"] == 4096


def test_set_limits_changes_only_the_limits_named_and_show_json_stays_valid(realm, registry):
    realm("tenant", "create", "acme", "--limit", "fuel=1000000")
    done = realm("tenant", "set-limits", "acme", "wall_seconds=60", "max_context=2048")
    assert done.returncode == 0, done.stderr
    shown = realm("tenant", "show", "acme", "--json").stdout
    limits = json.loads(shown, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))["limits"]
    assert (limits["wall_seconds"], limits["max_context"], limits["fuel"]) == (60.0, 2048, 1000000)
    one_error_line(realm("tenant", "set-limits", "acme", "wall_seconds=inf"), 1, "must be a finite number")
    one_error_line(realm("tenant", "set-limits", "ghost", "fuel=1"), 1, "no tenant named 'ghost'")
    one_error_line(realm("tenant", "set-limits", "acme", "fuel"), 2, "expected NAME=VALUE")
    assert json.loads(realm("tenant", "show", "acme", "--json").stdout)["limits"]["wall_seconds"] == 60.0


def test_set_models_names_the_models_a_tenant_may_use_and_all_gives_every_one_back(realm, registry):
    assert realm("tenant", "create", "acme", "--model", "tiny").returncode == 0
    assert json.loads(realm("tenant", "show", "acme", "--json").stdout)["models"] == ["tiny"]
    done = realm("tenant", "set-models", "acme", "gemma", "qwen3")
    assert done.returncode == 0 and "models gemma, qwen3" in done.stdout
    assert realm("tenant", "set-models", "acme", "--all").returncode == 0
    assert json.loads(realm("tenant", "show", "acme", "--json").stdout)["models"] == []
    one_error_line(realm("tenant", "set-models", "acme"), 2, "or --all")
    one_error_line(realm("tenant", "set-models", "acme", "a/b"), 1, "invalid model id")


def test_set_limits_refuses_a_memory_limit_the_deployed_module_does_not_fit(realm):
    realm("tenant", "create", "acme")
    realm("tenant", "deploy", "acme", str(GENERATE))
    one_error_line(realm("tenant", "set-limits", "acme", "memory_bytes=65536"), 1, "module needs")


def test_delete_removes_the_module_once_no_tenant_serves_it(realm, tmp_path, registry):
    spin = tmp_path / "spin.wat"
    spin.write_text(SPIN)
    for name in ("a", "b"):
        realm("tenant", "create", name)
        assert realm("tenant", "deploy", name, str(GENERATE)).returncode == 0
    shared = hashlib.sha256(GENERATE.read_bytes()).hexdigest()
    assert realm("tenant", "delete", "a").returncode == 0
    assert TenantRegistry(registry).module_bytes(shared) == GENERATE.read_bytes()  # b still serves it
    assert realm("tenant", "deploy", "b", str(spin)).returncode == 0  # b moves on: nothing serves it now
    assert TenantRegistry(registry).module_bytes(shared) is None
    assert realm("tenant", "delete", "b").returncode == 0
    with Database(registry).transaction() as tx:
        assert tx.all("SELECT sha256 FROM modules") == []


def test_usage_shows_totals_and_models_since_a_time(realm, registry):
    realm("tenant", "create", "acme")
    writer = TenantRegistry(registry).usage_writer()
    for model, at in (("gemma", 1000.0), ("tiny", 2000.0), ("tiny", 4e9)):
        writer.record(UsageRecord("acme", model, "completion", 200, 10, 2, 1, at))
    writer.close()
    report = json.loads(realm("tenant", "usage", "acme", "--json").stdout)
    assert report["total"] == {"requests": 3, "succeeded": 3, "prompt_tokens": 30, "completion_tokens": 6,
                               "cached_tokens": 3}
    assert report["models"]["tiny"]["requests"] == 2
    recent = json.loads(realm("tenant", "usage", "acme", "--since", "1970-01-01T00:20:00", "--json").stdout)
    assert recent["total"]["requests"] == 2 and set(recent["models"]) == {"tiny"}
    table = realm("tenant", "usage", "acme").stdout
    assert "gemma" in table and "tiny" in table and "30" in table
    one_error_line(realm("tenant", "usage", "acme", "--since", "soon"), 1, "--since 'soon': expected an age")
    one_error_line(realm("tenant", "usage", "ghost"), 1, "no tenant named 'ghost'")


@pytest.mark.parametrize("url, message", [
    ("mysql://db/realm", "bad registry URL 'mysql://db/realm': use sqlite:///ABS/PATH.db or postgresql://"),
    ("postgresql://realm:hunter2@127.0.0.1:1/realm", "tenant registry postgresql://realm:***@127.0.0.1:1/realm: "),
])
def test_a_bad_or_unreachable_registry_is_one_error_line_without_its_password(realm, url, message):
    done = realm("tenant", "--registry", url, "list")
    one_error_line(done, 1, message)
    assert "hunter2" not in done.stderr + done.stdout


def test_the_registry_flag_names_the_registry(realm, tmp_path):
    other = f"sqlite://{tmp_path / 'elsewhere' / 'r.db'}"
    assert realm("tenant", "--registry", other, "create", "acme").returncode == 0
    assert json.loads(realm("tenant", "list", "--json").stdout) == []  # not in the default registry
    assert [t["name"] for t in json.loads(realm("tenant", "--registry", other, "list", "--json").stdout)] == ["acme"]


@pytest.mark.parametrize("name,valid", [
    ("a", True), ("acme.prod_2-x", True), ("x" * 64, True),
    ("x" * 65, False), ("-acme", False), (".acme", False), ("_acme", False), ("ac me", False),
    ("acmé", False), ("acme\n", False), ("", False), ("a/b", False),
])
def test_names_follow_the_rule_the_help_states(realm, name, valid):
    rule = "1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
    assert rule in " ".join(realm("tenant", "create", "--help").stdout.split())
    done = realm("tenant", "create", "--", name)
    if valid:
        assert done.returncode == 0 and json.loads(realm("tenant", "show", name, "--json").stdout)["name"] == name
    else:
        one_error_line(done, 1, f"invalid tenant name {name!r}: use {rule}")


def test_tables_are_not_clipped_when_piped(realm):
    name = "a-tenant-with-a-long-name-" + "x" * 38
    realm("tenant", "create", name)
    realm("tenant", "deploy", name, str(GENERATE))
    digest = hashlib.sha256(GENERATE.read_bytes()).hexdigest()
    assert name in realm("tenant", "list").stdout
    assert digest in realm("tenant", "show", name).stdout


def test_a_tenant_stored_with_an_infinite_limit_shows_as_json_runs_into_one_error_and_can_be_fixed(realm, registry):
    realm("tenant", "create", "old")
    realm("tenant", "deploy", "old", str(GENERATE))
    with Database(registry).transaction() as tx:  # as a registry from before validation holds it
        limits = json.loads(tx.one("SELECT limits FROM tenants")["limits"])
        tx.execute("UPDATE tenants SET limits = ?", (json.dumps({**limits, "wall_seconds": float("inf")}),))
    shown = json.loads(realm("tenant", "show", "old", "--json").stdout,
                       parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert shown["limits"]["wall_seconds"] == "inf"
    one_error_line(realm("run", "x", "-m", TINY, "-b", "numpy", "--tenant", "old"), 1,
                   "limit wall_seconds must be a finite number", "realm tenant set-limits old")
    assert realm("tenant", "set-limits", "old", "wall_seconds=30").returncode == 0
    done = realm("run", "x", "-m", TINY, "-b", "numpy", "--tenant", "old", "--max-tokens", "2", "--temperature", "0",
                 "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completion_tokens"] == 2
