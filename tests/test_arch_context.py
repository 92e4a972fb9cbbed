"""The context a sequence is set up for is an input (LongRoPE picks its factors by it), and `realm
inspect` says what it found in a model of each architecture.

`realm logits --ctx-size` and the guest's sequences (their session's context: `realm run --ctx-size`,
a tenant's max_context, `realm serve --ctx-size`) choose tiny-phi3's short or long rope factors as
llama.cpp's n_ctx does; held to llama.cpp's logits for n_ctx 512 and 8192.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from oracle import ARCHS, arch_sequences, arch_tolerance, assert_matches
from starlette.testclient import TestClient

from host_functions.abi import Limits
from host_functions.engine.generation import generate_tokens
from host_functions.engine.model import Model
from host_functions.engine.sampling import SamplingParams
from realm.chat import load_chat_template
from realm.cli import main
from realm.models import draft_opener
from realm.sandbox.intake import compile_guest, reference_guest_path
from realm.sandbox.run import TenantSandbox
from realm.server import Server, ServerConfig, create_app
from realm.server.model_catalog import ModelSource
from realm.server.model_set import ModelSet, ServedModel
from realm.tenants import TenantRegistry

PHI3 = ARCHS / "tiny-phi3-F16.gguf"


def _logits_cli(tmp_path, tokens: np.ndarray, *flags: str):
    out = tmp_path / "logits.npy"
    ids = ",".join(str(int(t)) for t in tokens)
    result = CliRunner().invoke(main, ["logits", "--model", str(PHI3), "--backend", "cpu", "--tokens", ids,
                                       "--out", str(out), *flags])
    return result, (np.load(out) if result.exit_code == 0 else None)


def test_realm_logits_sets_the_sequence_up_for_the_context_it_is_given(tmp_path):
    by_key = {seq.key: seq for seq in arch_sequences(PHI3.name)}
    tol = arch_tolerance(PHI3.name, "F16")
    for key, flags in [("seq0", ()), ("seq0", ("--ctx-size", "512")), ("seq0_ctx8192", ("--ctx-size", "8192"))]:
        result, logits = _logits_cli(tmp_path, by_key[key].tokens, *flags)
        assert result.exit_code == 0, result.output
        assert_matches(logits, by_key[key].logits, tol, f"{key} {flags}")


@pytest.mark.parametrize("ctx_size, message", [("10", "10 is shorter than the 48 tokens given"),
                                               ("200000", "over the model's context of 131072 tokens")])
def test_a_context_that_cannot_hold_the_tokens_is_one_error_line(tmp_path, ctx_size, message):
    result, _ = _logits_cli(tmp_path, arch_sequences(PHI3.name)[0].tokens, "--ctx-size", ctx_size)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def phi3() -> Model:
    return Model.load(PHI3, backend="cpu")


@pytest.mark.parametrize("n_ctx", [512, 8192])
def test_the_guests_sequences_are_set_up_for_the_sessions_context(phi3, n_ctx):
    """The reference guest opens a sequence of prompt + max_tokens positions, but in a session of
    max_context n_ctx: its greedy tokens are those of a sequence set up for n_ctx on the host."""
    prompt = arch_sequences(PHI3.name)[0].tokens[:12].tolist()
    text = phi3.tokenizer.decode(prompt)
    ids = phi3.tokenizer.encode(text)
    params = SamplingParams(temperature=0.0, max_tokens=16)
    expected = list(generate_tokens(phi3, ids, params, n_ctx=n_ctx))
    guest = compile_guest(reference_guest_path().read_bytes())
    result = TenantSandbox(phi3, Limits(max_context=n_ctx)).run(guest, {"prompt": text, "temperature": 0,
                                                                       "max_tokens": 16})
    assert result.text == phi3.tokenizer.decode(expected)


def test_long_and_short_contexts_give_other_continuations(phi3):
    """What the two tests above tell apart: the factor sets lead greedy decoding to other tokens."""
    ids = arch_sequences(PHI3.name)[0].tokens[:12].tolist()
    params = SamplingParams(temperature=0.0, max_tokens=16)
    assert list(generate_tokens(phi3, ids, params, n_ctx=512)) != list(generate_tokens(phi3, ids, params, n_ctx=8192))


@pytest.mark.parametrize("name, expected", [
    ("tiny-qwen2-F16.gguf", {"architecture": "qwen2", "biases": ["attn_q", "attn_k", "attn_v"],
                             "fused_matrices": {}, "rope_layout": "neox", "rope_factors": "none"}),
    ("tiny-qwen3-F16.gguf", {"architecture": "qwen3", "head_dim": 64, "tied_output": True, "biases": [],
                             "norms": ["attn_norm (embd)", "attn_q_norm (per head)", "attn_k_norm (per head)",
                                       "ffn_norm (embd)"]}),
    ("tiny-llama3-F16.gguf", {"architecture": "llama", "rope_layout": "interleaved",
                              "rope_factors": "rope_freqs.weight"}),
    ("tiny-phi3-F16.gguf", {"architecture": "phi3", "sliding_window": 0, "rope_attn_factor": pytest.approx(1.1902381),
                            "fused_matrices": {"attn_qkv": ["q", "k", "v"], "ffn_up": ["gate", "up"]},
                            "rope_factors": "LongRoPE: rope_factors_short.weight up to a context of 4096, "
                                            "rope_factors_long.weight beyond"}),
])
def test_inspect_says_what_it_found(name, expected):
    result = CliRunner().invoke(main, ["inspect", "--model", str(ARCHS / name), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert {key: info[key] for key in expected} == expected


@pytest.mark.parametrize("ctx_size", [512, 8192])
def test_the_server_sets_a_requests_sequences_up_for_its_ctx_size(phi3, ctx_size):
    registry = TenantRegistry()
    registry.create("acme", Limits(max_context=16384))
    _, key = registry.create_key("acme")
    template = load_chat_template(phi3.tokenizer, phi3.config.arch, "chatml")
    served = ServedModel(PHI3.stem, phi3, template, 0)
    models = ModelSet([ModelSource(PHI3.stem, PHI3)], lambda source: served, lambda served: None)
    server = Server(models, ServerConfig(ctx_size=ctx_size), registry)
    ids = arch_sequences(PHI3.name)[0].tokens[:12].tolist()
    text = phi3.tokenizer.decode(ids)
    expected = generate_tokens(phi3, phi3.tokenizer.encode(text), SamplingParams(temperature=0.0, max_tokens=16),
                               n_ctx=ctx_size)
    try:
        with TestClient(create_app(server)) as client:
            answer = client.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": PHI3.stem, "prompt": text, "max_tokens": 16, "temperature": 0})
    finally:
        server.runner.close()
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"] == phi3.tokenizer.decode(list(expected))


@pytest.mark.parametrize("speculative", ["ngram", "self:1", "draft:tiny-phi3-Q4_K.gguf"])
def test_speculation_on_a_long_context_generates_what_plain_decoding_does(phi3, speculative):
    """Drafts (prompt lookup, the first layer, a Q4_K copy) verified in sequences set up for 8192: the
    draft's sequences get the session's context too, so greedy output is plain decoding's."""
    draft = ARCHS / "tiny-phi3-Q4_K.gguf"
    speculative = speculative.replace(draft.name, str(draft))
    ids = arch_sequences(PHI3.name)[0].tokens[:12].tolist()
    request = {"prompt": phi3.tokenizer.decode(ids + ids[:6]), "temperature": 0, "max_tokens": 24}
    guest = compile_guest(reference_guest_path().read_bytes())
    sandbox = TenantSandbox(phi3, Limits(max_context=8192))
    plain = sandbox.run(guest, request)
    fast = sandbox.run(guest, {**request, "speculative": speculative}, open_draft=draft_opener(phi3, "cpu", [draft]))
    assert fast.text == plain.text and fast.completion_tokens == plain.completion_tokens == 24
    assert fast.steps.verified_steps > 0


@pytest.mark.parametrize("ctx_size", ["512", "8192"])
def test_realm_run_sets_the_guests_sequences_up_for_its_ctx_size(phi3, ctx_size):
    ids = arch_sequences(PHI3.name)[0].tokens[:12].tolist()
    text = phi3.tokenizer.decode(ids)
    expected = generate_tokens(phi3, phi3.tokenizer.encode(text), SamplingParams(temperature=0.0, max_tokens=16),
                               n_ctx=int(ctx_size))
    result = CliRunner().invoke(main, ["run", text, "--model", str(PHI3), "--backend", "cpu", "--ctx-size", ctx_size,
                                       "--temperature", "0", "--max-tokens", "16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text"] == phi3.tokenizer.decode(list(expected))
