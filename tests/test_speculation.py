"""Speculative decoding through the reference guest: prompt lookup, a draft model and self-speculation
generate exactly what plain decoding does under greedy, and keep its distribution under sampling."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import DATA

from host_functions.abi import HOST_FUNCTIONS, AbiError, Limits, SamplerState, SeqState, Session, Status
from host_functions.engine.model import Model
from host_functions.engine.sampling import Sampler, SamplingParams
from host_functions.errors import GuestError
from realm.models import draft_opener
from realm.sandbox.intake import compile_guest, reference_guest_path
from realm.sandbox.run import TenantSandbox

TARGET, DRAFT = DATA / "tiny-llama-F32.gguf", DATA / "tiny-llama-Q8_0.gguf"
SOURCES = ["ngram", "self:1", f"draft:{DRAFT}"]
PROMPTS = ["one two three four one two three four one two", "The quick brown fox", "a b a b a b a b a b a b",
           "def f(x):\n    return x\ndef g(x):\n    return"]


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(TARGET, backend="numpy")


@pytest.fixture(scope="module")
def guest():
    return compile_guest(reference_guest_path().read_bytes())


def run(model: Model, guest, limits: Limits | None = None, **request):
    return TenantSandbox(model, limits).run(guest, request, open_draft=draft_opener(model, "numpy", [DRAFT]))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_speculation_generates_exactly_what_plain_decoding_does(model, guest, source, prompt):
    for extra in ({"max_tokens": 48}, {"max_tokens": 40, "repeat_penalty": 1.2},
                  {"max_tokens": 48, "stop": [" three"]}):
        plain = run(model, guest, prompt=prompt, temperature=0, **extra)
        fast = run(model, guest, prompt=prompt, temperature=0, speculative=source, **extra)
        assert fast.text == plain.text, (source, extra)
        assert (fast.finish_reason, fast.completion_tokens) == (plain.finish_reason, plain.completion_tokens)


@pytest.mark.parametrize("source", SOURCES)
def test_speculation_stops_at_the_context_like_plain_decoding(model, guest, source):
    limits = Limits(max_context=len(model.tokenizer.encode(PROMPTS[0])) + 12)
    plain = run(model, guest, limits, prompt=PROMPTS[0], temperature=0, max_tokens=100)
    fast = run(model, guest, limits, prompt=PROMPTS[0], temperature=0, max_tokens=100, speculative=source)
    assert (fast.text, fast.finish_reason) == (plain.text, "context")


def test_prompt_lookup_verifies_several_tokens_per_target_step_on_repetitive_text(model, guest):
    result = run(model, guest, prompt=PROMPTS[2], temperature=0, max_tokens=64, speculative="ngram")
    steps = result.steps
    assert steps.verified_steps > 0 and steps.accepted > 0
    # the prompt's step plus fewer decode steps than tokens
    assert steps.target_steps - 1 < result.completion_tokens


def test_a_draft_model_that_cannot_pay_for_itself_is_paused_and_the_text_stays_exact(model, guest):
    # The target's own file as its draft: every draft is accepted, but a drafted token costs a whole
    # target step of draft layers, so after its first window of drafts the guest decodes plainly.
    opener = draft_opener(model, "numpy", [TARGET])
    request = {"prompt": PROMPTS[1], "temperature": 0, "max_tokens": 120}
    plain = TenantSandbox(model).run(guest, request)
    fast = TenantSandbox(model).run(guest, {**request, "speculative": f"draft:{TARGET}"}, open_draft=opener)
    assert fast.text == plain.text and fast.completion_tokens == plain.completion_tokens == 120
    steps = fast.steps
    assert steps.drafted > 0 and steps.accepted == steps.drafted, steps
    plain_steps = steps.target_steps - 1 - steps.verified_steps
    assert steps.drafted <= 8 and plain_steps >= 100, steps


# --- the ABI's checks ------------------------------------------------------------------------------

def _session(model: Model) -> Session:
    return Session(model, Limits(), open_draft=draft_opener(model, "numpy", [DRAFT]))


def _call(session: Session, name: str, *args: int) -> int:
    return HOST_FUNCTIONS[name].impl(session, None, *args)


def _status(session: Session, name: str, *args: int) -> int:
    try:
        return _call(session, name, *args)
    except AbiError as exc:
        return int(exc.status)


def test_row_functions_need_a_finish_all_step_and_a_row_in_range(model):
    s = _session(model)
    seq = s.handles.add(SeqState(model.open_sequence(64)))
    assert _status(s, "logits_row", seq, 0) == Status.WRONG_STATE
    state = s.handles.get(seq, SeqState)
    state.seq.append(list(range(1, 19)))
    for layer in range(model.config.n_layers):
        state.seq.forward_layer(layer)
    assert _status(s, "seq_finish_all", seq) == Status.INVALID_ARGUMENT  # 18 rows: more than 17
    state.seq.truncate(0)
    state.seq.append([1, 5, 9])
    for layer in range(model.config.n_layers):
        state.seq.forward_layer(layer)
    assert _call(s, "seq_finish_all", seq) == 3
    full = model.logits_for([1, 5, 9])
    assert _call(s, "logits_row", seq, 1) == Status.OK
    np.testing.assert_array_equal(state.logits, state.rows[1])
    np.testing.assert_allclose(state.rows, full, rtol=1e-5, atol=1e-5)
    assert _status(s, "logits_row", seq, 3) == Status.INVALID_ARGUMENT
    assert _status(s, "logits_row", seq, -1) == Status.INVALID_ARGUMENT


def test_draft_verification_refuses_drafts_the_draft_sequence_did_not_sample(model):
    s = _session(model)
    seq = s.handles.add(SeqState(model.open_sequence(64)))
    draft_seq = s.handles.add(SeqState(model.open_sequence(64), records_samples=True))
    sampler = s.handles.add(SamplerState(Sampler(SamplingParams(temperature=0))))
    state = s.handles.get(seq, SeqState)
    state.seq.append([1, 5, 9])
    for layer in range(model.config.n_layers):
        state.seq.forward_layer(layer)
    _call(s, "seq_finish_all", seq)
    with pytest.raises(AbiError, match="last samples are not the drafts"):
        HOST_FUNCTIONS["spec_verify"].impl(s, _NoMemory(), seq, sampler, draft_seq, 0)


class _NoMemory:
    """Guest memory of which every span is valid and writes vanish (for checks that fail before writing)."""

    def span(self, ptr: int, count: int, itemsize: int = 1) -> int:
        return 0


@pytest.mark.parametrize("name, message", [
    ("draft:/etc/passwd", "not allowed"),
    (f"draft:{DATA / 'tiny-llama-Q4_K.gguf'}", "not allowed"),  # a real model, but not one the operator named
    ("self:0", "can be cut after 1..1 layers"),
    ("self:2", "can be cut after 1..1 layers"),
    ("self:x", "self:N with N a number"),
])
def test_a_guest_opens_only_the_drafts_the_operator_allowed(model, guest, name, message):
    with pytest.raises(GuestError, match="cannot open the speculative draft|" + message) as err:
        run(model, guest, prompt="hi", temperature=0, max_tokens=4, speculative=name)
    assert message in str(err.value)


def test_a_draft_with_another_vocabulary_is_refused(model, guest, tmp_path):
    # The draft file with one token's text changed in place (same length, so the GGUF stays valid).
    from host_functions.formats.gguf_file import GGUFFile

    data = DRAFT.read_bytes()
    pieces = [t.encode() for t in GGUFFile(DRAFT).metadata["tokenizer.ggml.tokens"]]
    piece = next(len(t).to_bytes(8, "little") + t for t in pieces
                 if len(t) >= 2 and not t.startswith(b"<") and data.count(len(t).to_bytes(8, "little") + t) == 1)
    other = tmp_path / "other-vocab.gguf"
    other.write_bytes(data.replace(piece, piece[:-1] + (b"#" if piece[-1:] != b"#" else b"%")))
    with pytest.raises(GuestError, match="does not share the target model's vocabulary"):
        TenantSandbox(model).run(guest, {"prompt": "hi", "max_tokens": 4, "speculative": f"draft:{other}"},
                                 open_draft=draft_opener(model, "numpy", [other]))


def test_the_speculation_bench_times_each_kind_plain_and_speculative_in_one_run(model):
    from realm.bench.speculation import run_speculation_bench

    texts = {"repetitive": ((PROMPTS[2], PROMPTS[0]), {}), "penalised": ((PROMPTS[1],), {"repeat_penalty": 1.3})}
    results = run_speculation_bench(model, "ngram", n_decode=24, rounds=2, texts=texts)
    assert [r.kind for r in results] == ["repetitive", "penalised"]
    repetitive = results[0]
    assert repetitive.tokens == 2 * 23 and repetitive.accepted > 0
    assert repetitive.acceptance_rate == repetitive.accepted / repetitive.drafted
    assert repetitive.tokens_per_target_step > 1
    for r in results:
        assert r.decode_tok_s > 0 and r.plain_decode_tok_s > 0 and len(r.prompt_speedups) == r.prompts
        assert abs(r.speedup - r.decode_tok_s / r.plain_decode_tok_s) < 1e-9
        assert set(r.as_json()) >= {"acceptance_rate", "tokens_per_target_step", "decode_tok_s", "plain_decode_tok_s",
                                    "speedup"}
