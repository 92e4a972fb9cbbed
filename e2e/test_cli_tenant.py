"""`realm tenant create|deploy|list|show|delete`, and `realm run --tenant`, as a user runs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from oracle import DATA

TINY = str(DATA / "tiny-llama-F32.gguf")
GENERATE = Path(__file__).resolve().parent.parent / "guest" / "generate.wasm"
WRONG_SIGNATURE = """(module (import "realm" "forward_layer" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "realm_main") (param i32 i32) (result i32) (i32.const 0)))"""
SPIN = """(module (memory (export "memory") 1)
  (func (export "realm_alloc") (param i32) (result i32) (i32.const 64))
  (func (export "realm_main") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0)))"""


def test_a_tenants_life_from_create_to_delete(realm, tmp_path):
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


def test_tenant_errors_are_one_line(realm):
    realm("tenant", "create", "acme")
    for args, message in ((["create", "acme"], "Error: tenant 'acme' already exists"),
                          (["create", "bad name"], "Error: invalid tenant name 'bad name'"),
                          (["show", "ghost"], "Error: no tenant named 'ghost'"),
                          (["delete", "ghost"], "Error: no tenant named 'ghost'"),
                          (["create", "x", "--limit", "speed=9"], "Error: unknown limit 'speed'")):
        done = realm("tenant", *args)
        assert done.returncode == 1 and done.stderr.startswith(message), (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
