"""LoRA as a user runs it: `realm logits --lora` gives llama.cpp's logits, and two tenants on one model,
one with an adapter, run at the same time with each output equal to its solo run and the adapter
never reaching the other tenant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from oracle import DATA, assert_matches, reference_sequences, tolerance_for

ROOT = Path(__file__).resolve().parent.parent
BASE, ADAPTER = DATA / "tiny-llama-F32.gguf", DATA / "tiny-llama-lora-r8.gguf"


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("base, adapter, scale", [
    ("tiny-llama-Q4_K.gguf", "tiny-llama-lora-r8.gguf", 0.5),
    ("tiny-gemma3-F32.gguf", "tiny-gemma3-lora-r8.gguf", 1.0),
])
def test_realm_logits_with_an_adapter_gives_llamacpps_logits(realm, tmp_path, backend, base, adapter, scale, mode):
    tokens, ref = reference_sequences(f"{base.removesuffix('.gguf')}+lora-r8@{scale}.logits.npz")[0]
    out = tmp_path / "logits.npy"
    done = realm("logits", "--model", str(DATA / base), "--backend", backend, "--tokens", ",".join(map(str, tokens)),
                 "--lora", str(DATA / adapter), "--lora-scale", str(scale), "--lora-mode", mode, "--out", str(out))
    assert done.returncode == 0, done.stderr
    weights = base.removesuffix(".gguf").rsplit("-", 1)[1]
    assert_matches(np.load(out), ref, tolerance_for(weights, lora=True), base)


def test_bench_lora_reports_decode_with_and_without_the_adapter(realm):
    done = realm("bench", "--model", str(BASE), "--backend", "cpu", "--lora", str(ADAPTER), "--prompt-tokens", "8",
                 "--decode-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    single = json.loads(done.stdout)
    assert (single["lora"], single["lora_rank"], single["lora_mode"]) == (ADAPTER.name, 8, "unmerged")
    assert single["decode_tok_s"] > 0 and single["lora_decode_tok_s"] > 0
    assert single["ratio"] == pytest.approx(single["lora_decode_tok_s"] / single["decode_tok_s"], rel=0.01)
    done = realm("bench", "--model", str(BASE), "--backend", "cpu", "--lora", str(ADAPTER), "--lora-mode", "merged",
                 "--concurrency", "1,5", "--decode-tokens", "3", "--json")
    assert done.returncode == 0, done.stderr
    levels = json.loads(done.stdout)
    assert [(r["concurrency"], r["adapters"], r["lora_mode"]) for r in levels] == [(1, 1, "merged"), (5, 4, "merged")]
    assert all(r["aggregate_tok_s"] > 0 and r["lora_aggregate_tok_s"] > 0 for r in levels)


def test_bench_lora_with_an_adapter_for_another_model_is_one_error_line(realm):
    done = realm("bench", "--model", str(BASE), "--lora", str(DATA / "tiny-gemma3-lora-r8.gguf"),
                 "--decode-tokens", "2")
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert "made for architecture 'gemma3'" in done.stderr


def test_an_adapter_for_another_model_is_one_error_line(realm, tmp_path):
    done = realm("logits", "--model", str(BASE), "--tokens", "1,2", "--lora", str(DATA / "tiny-gemma3-lora-r8.gguf"),
                 "--out", str(tmp_path / "x.npy"))
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert "made for architecture 'gemma3'" in done.stderr


def _setup_tenants(realm) -> None:
    for tenant in ("acme", "globex"):
        assert realm("tenant", "create", tenant).returncode == 0
        assert realm("tenant", "deploy", tenant, str(ROOT / "guest" / "generate.wasm")).returncode == 0
    bound = realm("tenant", "set-lora", "acme", str(ADAPTER), "--scale", "0.5", "--as", "style")
    assert bound.returncode == 0, bound.stderr


def _solo(realm, tenant: str, prompt: str, *extra: str) -> str:
    done = realm("run", prompt, "--model", str(BASE), "--tenant", tenant, "--temperature", "0", "--max-tokens", "10",
                 "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["text"]


def test_two_tenants_at_once_one_with_an_adapter_each_get_their_solo_output(realm, tmp_path):
    _setup_tenants(realm)
    prompts = ["Once upon a time", "The quick brown fox", "In the beginning"]
    lines = []
    for prompt in prompts:
        lines.append({"tenant": "acme", "prompt": prompt, "lora": "style", "temperature": 0, "max_tokens": 10})
        lines.append({"tenant": "globex", "prompt": prompt, "temperature": 0, "max_tokens": 10})
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = realm("batch", str(requests), "--model", str(BASE), "--concurrency", "6")
    assert done.returncode == 0, done.stderr
    together = [json.loads(line)["text"] for line in done.stdout.splitlines()]
    for i, prompt in enumerate(prompts):
        adapted, plain = _solo(realm, "acme", prompt, "--param", "lora=style"), _solo(realm, "globex", prompt)
        assert together[2 * i] == adapted and together[2 * i + 1] == plain
        assert adapted != plain  # the adapter does something, and only for acme
        assert plain == _solo(realm, "acme", prompt)  # acme without naming it: the base model


def test_a_tenant_cannot_name_another_tenants_adapter(realm):
    _setup_tenants(realm)
    done = realm("run", "hi", "--model", str(BASE), "--tenant", "globex", "--param", "lora=style", "--max-tokens", "4")
    assert done.returncode == 1 and "no such LoRA adapter" in done.stderr, done.stderr
    shown = json.loads(realm("tenant", "show", "globex", "--json").stdout)
    assert shown["adapters"] == {}
    assert json.loads(realm("tenant", "show", "acme", "--json").stdout)["adapters"]["style"]["scale"] == 0.5


def test_set_lora_refuses_what_is_not_an_adapter_and_unset_lora_unbinds(realm):
    _setup_tenants(realm)
    bad = realm("tenant", "set-lora", "acme", str(BASE))
    assert bad.returncode == 1 and "not a LoRA adapter" in bad.stderr
    assert realm("tenant", "unset-lora", "acme", "style").returncode == 0
    again = realm("tenant", "unset-lora", "acme", "style")
    assert again.returncode == 1 and "no adapter bound as 'style'" in again.stderr


def test_a_batch_line_with_a_missing_adapter_fails_alone_saying_so(realm, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"prompt": "hi", "max_tokens": 2, "lora": "/no/such/adapter.gguf"}) + "\n"
                        + json.dumps({"prompt": "hi", "max_tokens": 2, "lora": str(ADAPTER), "lora_scale": 0.5}) + "\n")
    done = realm("batch", str(requests), "--model", str(BASE))
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and "no such LoRA adapter file or folder: /no/such/adapter.gguf" in rows[0]["error"]
    assert rows[1]["completion_tokens"] == 2, rows[1]


def test_batch_lines_choose_their_lora_mode_and_a_bad_one_fails_alone(realm, tmp_path):
    line = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "lora": str(ADAPTER)}
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(x) for x in (
        {**line, "lora_mode": "merged"}, line, {**line, "lora_mode": "fused"})) + "\n")
    done = realm("batch", str(requests), "--model", str(BASE), "--backend", "cpu")
    rows = [json.loads(text) for text in done.stdout.splitlines()]
    assert done.returncode == 1 and "\"lora_mode\" must be" in rows[2]["error"]
    assert rows[0]["completion_tokens"] == rows[1]["completion_tokens"] == 6
    assert rows[0]["text"] == rows[1]["text"]  # merged and unmerged differ in last bits, not in greedy text here


@pytest.mark.parametrize("args, option", [
    (["run", "hi", "--max-tokens", "1", "--lora-mode", "merged"], "--lora-mode"),
    (["logits", "--prompt", "hi", "--out", "OUT", "--lora-scale", "0.5"], "--lora-scale"),
    (["bench", "--lora-mode", "merged", "--no-guest"], "--lora-mode"),
])
def test_lora_scale_or_mode_without_an_adapter_is_a_usage_error(realm, tmp_path, args, option):
    done = realm(*[str(tmp_path / "x.npy") if a == "OUT" else a for a in args], "--model", str(BASE))
    assert done.returncode == 2 and f"{option} needs --lora FILE" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_batch_line_with_lora_mode_but_no_adapter_fails_alone(realm, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"prompt": "hi", "max_tokens": 2, "lora_mode": "merged"}) + "\n"
                        + json.dumps({"prompt": "hi", "max_tokens": 2}) + "\n")
    done = realm("batch", str(requests), "--model", str(BASE))
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and "need a \"lora\" adapter" in rows[0]["error"]
    assert rows[1]["completion_tokens"] == 2, rows[1]


def test_a_bound_adapter_replaced_by_a_link_is_refused_naming_its_alias_not_the_host_path(realm, tmp_path):
    """The tenant swaps its bound file for a link to weights it must not read: Realm does not follow it,
    and the error names the adapter as the tenant bound it ('style'), not where it lies on the host."""
    _setup_tenants(realm)
    own = tmp_path / "tenant-files" / "style.gguf"
    own.parent.mkdir()
    own.write_bytes(ADAPTER.read_bytes())
    assert realm("tenant", "set-lora", "globex", str(own), "--as", "style").returncode == 0
    own.unlink()
    own.symlink_to(ADAPTER)
    done = realm("run", "hi", "--model", str(BASE), "--tenant", "globex", "--param", "lora=style", "--max-tokens", "4")
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "LoRA adapter 'style': is a symbolic link, which Realm does not follow" in done.stderr, done.stderr
    assert str(own.parent) not in done.stderr
