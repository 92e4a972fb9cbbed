"""The sandbox runs guests on a shared model: the reference guests, the ABI's behaviour, compilation checks."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from guest_helpers import (
    DATA,
    TINY_LLAMA,
    compile_wat,
    data_bytes,
    data_i32,
    expect,
    hex_dump,
    hex_floats,
    hex_words,
    prefill,
    wat_guest,
)
from oracle import EXACT, assert_matches

from host_functions.abi import HOST_FUNCTIONS, HostFunction, Limits, Status
from host_functions.abi.limits import LOG_LINE_BYTES
from host_functions.engine.generation import generate_text, generate_tokens
from host_functions.engine.model import Model
from host_functions.engine.sampling import SamplingParams
from host_functions.errors import GuestError, QuotaExceeded, RequestCancelled
from realm.sandbox import exports
from realm.sandbox.intake import MAX_MODULE_BYTES, compile_guest, reference_guest
from realm.sandbox.report import GuestRunError, GuestRunFailed
from realm.sandbox.run import TenantSandbox

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(TINY_LLAMA, backend="numpy")


@pytest.fixture(scope="module")
def generate():
    return reference_guest()


@pytest.fixture(scope="module")
def choice():
    return reference_guest("choice")


def direct(model: Model, prompt: str, **params) -> str:
    return "".join(generate_text(model, prompt, SamplingParams(**params)))


# --- the reference guest ---------------------------------------------------------------------

SAMPLING_CASES = [
    {"temperature": 0},
    {"temperature": 0.9, "seed": 1},
    {"temperature": 1.5, "top_k": 5, "seed": 2},
    {"temperature": 1.2, "top_k": 0, "top_p": 0.5, "min_p": 0.0, "seed": 3},
    {"temperature": 1.2, "top_k": 0, "top_p": 1.0, "min_p": 0.2, "seed": 4},
    {"temperature": 0, "repeat_penalty": 1.5, "repeat_last_n": 16},
    {"temperature": 0, "presence_penalty": 2.0, "frequency_penalty": 1.0, "repeat_last_n": -1},
]


@pytest.mark.parametrize("params", SAMPLING_CASES)
def test_reference_guest_generates_what_the_direct_path_generates(model, generate, params):
    request = {"prompt": PROMPT, "max_tokens": 24, **params}
    result = TenantSandbox(model).run(generate, request)
    assert result.status == Status.OK
    assert result.text == direct(model, PROMPT, max_tokens=24, **params)


def test_every_sampling_parameter_reaches_the_host_sampler(model, generate):
    texts = {TenantSandbox(model).run(generate, {"prompt": PROMPT, "max_tokens": 24, **p}).text
             for p in SAMPLING_CASES}
    assert len(texts) == len(SAMPLING_CASES)  # each parameter set changes the output


def test_reference_guest_stops_before_a_stop_string_and_never_emits_it(model, generate):
    greedy = direct(model, PROMPT, temperature=0, max_tokens=24)
    stop = greedy[len(greedy) // 2: len(greedy) // 2 + 2]
    request = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stop": ["\x00never", stop]}
    result = TenantSandbox(model).run(generate, request)
    assert result.text == greedy[:greedy.index(stop)]
    assert result.text == direct(model, PROMPT, temperature=0, max_tokens=24, stop=("\x00never", stop))


def test_reference_guest_streams_its_text_through_emit(model, generate):
    pieces: list[str] = []
    result = TenantSandbox(model).run(generate, {"prompt": PROMPT, "max_tokens": 16, "temperature": 0},
                                      on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == result.text


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_reference_guest_generates_at_most_max_tokens_and_runs_each_step_in_one_host_call(model, generate,
                                                                                          max_tokens):
    prompt_ids = model.tokenizer.encode(PROMPT)
    result = TenantSandbox(model).run(generate, {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0})
    steps = result.trace["seq_step"].calls
    assert steps == max_tokens  # the prompt's step, then one per generated token but the last
    assert result.trace["forward_layer"].calls == result.trace["seq_finish"].calls == 0
    assert result.trace["sample"].calls == max_tokens
    assert result.tokens_fed == len(prompt_ids) + max_tokens - 1


def test_reference_guest_reports_why_generation_ended_and_the_token_counts(model, generate):
    n_prompt = len(model.tokenizer.encode(PROMPT))
    greedy = list(generate_tokens(model, model.tokenizer.encode(PROMPT), SamplingParams(temperature=0, max_tokens=40)))
    assert len(greedy) == 40  # the tiny model does not end early on this prompt, so every reason can be reached

    length = TenantSandbox(model).run(generate, {"prompt": PROMPT, "max_tokens": 7, "temperature": 0})
    assert (length.finish_reason, length.prompt_tokens, length.completion_tokens) == ("length", n_prompt, 7)

    # A stop string: the tokens up to the one that completed it count, its text is held back.
    stop = model.tokenizer.decode(greedy[3:5])
    stopped = TenantSandbox(model).run(generate, {"prompt": PROMPT, "max_tokens": 40, "temperature": 0,
                                                  "stop": [stop]})
    assert stopped.finish_reason == "stop" and stopped.completion_tokens <= 5
    assert stop not in stopped.text

    # The context: n_ctx - n_prompt + 1 tokens (the last is sampled from the full sequence's logits).
    limits = Limits(max_context=n_prompt + 3)
    full = TenantSandbox(model, limits).run(generate, {"prompt": PROMPT, "max_tokens": 40, "temperature": 0})
    assert (full.finish_reason, full.completion_tokens) == ("context", 4)
    assert full.text == model.tokenizer.decode(greedy[:4])


def test_result_report_rejects_unknown_reasons_and_negative_counts(model):
    from host_functions.abi import AbiError, Session

    report = HOST_FUNCTIONS["result_report"].impl
    session = Session(model, Limits())
    for args in [(0, 1, 1), (4, 1, 1), (1, -1, 0), (2, 0, -5)]:
        with pytest.raises(AbiError) as err:
            report(session, None, *args)
        assert err.value.status == Status.INVALID_ARGUMENT
    assert report(session, None, 3, 10, 2) == Status.OK
    assert (session.report.finish_reason, session.report.prompt_tokens, session.report.completion_tokens) == (
        "context", 10, 2)


def test_reference_guest_greedy_on_the_real_model_continues_like_llamacpp(generate):
    from realm.models import load_model

    prompt = json.loads((DATA / "gemma3-270m.prompts.json").read_text())[0]
    real = load_model(backend="numpy")
    result = TenantSandbox(real).run(generate, {"prompt": prompt["prompt"], "max_tokens": 12, "temperature": 0})
    assert result.text.startswith(" Paris")
    assert result.text == real.tokenizer.decode(prompt["greedy_ids"][:12])


# --- the choice guest: constrained decoding inside the sandbox -------------------------------

CHOICES = ["yes", "no", "maybe", "yes and no", "a hundred thousand"]


def test_choice_guest_output_is_always_one_of_the_choices(model, choice, generate):
    allowed = {model.tokenizer.decode(model.tokenizer.encode(c, add_bos=False)) for c in CHOICES}
    outputs, free = [], []
    for seed in range(40):
        request = {"prompt": PROMPT, "choices": CHOICES, "temperature": 2.0, "top_k": 0, "min_p": 0.0,
                   "seed": seed}
        outputs.append(TenantSandbox(model).run(choice, request).text)
        free.append(TenantSandbox(model).run(generate, {**request, "max_tokens": 4}).text)
    assert set(outputs) <= allowed
    assert len(set(outputs)) >= 3  # sampling is random; the mask is what keeps it inside the choices
    assert not set(free) & allowed  # without the guest's mask the model says something else


def test_choice_guest_follows_the_model_when_greedy(model, choice):
    """Greedy choice = the choice whose tokens the model rates highest, step by step."""
    tok = model.tokenizer
    prompt_ids = tok.encode(PROMPT)
    options = [tok.encode(c, add_bos=False) for c in ("yes", "no")]
    seq = model.open_sequence(64)
    logits = seq.step(prompt_ids)
    best = max(options, key=lambda ids: logits[ids[0]])
    result = TenantSandbox(model).run(choice, {"prompt": PROMPT, "choices": ["yes", "no"], "temperature": 0})
    assert result.text == tok.decode(best)


def test_choice_guest_rejects_a_request_without_choices(model, choice):
    with pytest.raises(GuestError, match="INVALID_ARGUMENT"):
        TenantSandbox(model).run(choice, {"prompt": PROMPT})


def test_a_failing_status_is_reported_in_the_guests_own_words_on_one_printable_line(model):
    reason = "prompt too long\n\x1b[31mfor me" + "!" * 400
    body = f"""(drop (call $log (i32.const 3) (i32.const 256) (i32.const {len(reason.encode())})))
               (i32.const {int(Status.CAPACITY)})"""
    with pytest.raises(GuestError) as err:
        TenantSandbox(model).run(compile_wat(body, extra=data_bytes(reason.encode(), 256)), {})
    message = str(err.value)
    assert message.startswith("prompt too long  [31mfor me!!!") and message.endswith("... (guest status CAPACITY)")
    assert message.isprintable() and len(message) < 340


def test_a_cancelled_request_ends_at_the_guests_next_host_call(model):
    cancel = threading.Event()
    cancel.set()
    guest = compile_wat("(loop $l (drop (call $token_is_eog (i32.const 1))) (br $l)) (i32.const 0)")
    with pytest.raises(RequestCancelled):
        TenantSandbox(model).run(guest, {}, cancel=cancel)


# --- the ABI through small WAT guests ----------------------------------------------------------

def tokens0(n: int) -> np.ndarray:
    return np.load(DATA / "tiny-llama-F32.logits.npz")["tokens0"][:n]


def test_logits_read_through_the_abi_match_llamacpp(model):
    """Prefill 40 tokens, then step 4 more one by one, copying each step's logits into the guest."""
    ref = np.load(DATA / "tiny-llama-F32.logits.npz")
    ids, theirs = ref["tokens0"][:44], ref["seq0"][:44]
    n_vocab = model.config.n_vocab
    body = f"""
      (local.set $s (call $seq_open (i32.const 64)))
      (local.set $a (i32.const 40))
      (local.set $b (i32.const 0))
      (loop $step
        {expect("(call $seq_append (local.get $s) (i32.add (i32.const 64) (i32.shl (local.get $b) (i32.const 2)))"
                " (i32.sub (local.get $a) (local.get $b)))", "(i32.const 0)", 1)}
        (local.set $i (i32.const 0))
        (loop $layer
          (drop (call $forward_layer (local.get $s) (local.get $i)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $layer (i32.lt_s (local.get $i) (i32.const {model.config.n_layers}))))
        {expect("(call $seq_finish (local.get $s))", "(i32.const 0)", 2)}
        {expect(f"(call $logits_read (local.get $s) (i32.const 8192) (i32.const {n_vocab}))",
                f"(i32.const {n_vocab})", 3)}
        {hex_dump(f"(i32.const {n_vocab})", 8192)}
        (local.set $b (local.get $a))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (br_if $step (i32.le_s (local.get $a) (i32.const 44))))
      (i32.const 0)"""
    guest = compile_wat(body, extra=data_i32(ids, 64))
    ours = hex_floats(TenantSandbox(model).run(guest, {}).text).reshape(5, n_vocab)
    assert_matches(ours, theirs[39:44], EXACT, "logits_read")


def test_seq_step_runs_the_remaining_layers_and_finishes_like_forward_layer_and_seq_finish(model):
    """ABI 5: a whole step in one call, or its remaining layers after forward_layer(0); nothing pending
    is WRONG_STATE, as forward_layer says; seq_step_all keeps every row, as seq_finish_all does."""
    ref = np.load(DATA / "tiny-llama-F32.logits.npz")
    ids, theirs = ref["tokens0"][:41], ref["seq0"][:41]
    n_vocab = model.config.n_vocab
    dump = f"""{expect(f"(call $logits_read (local.get $s) (i32.const 8192) (i32.const {n_vocab}))",
                       f"(i32.const {n_vocab})", 9)}
      {hex_dump(f"(i32.const {n_vocab})", 8192)}"""
    body = f"""
      (local.set $s (call $seq_open (i32.const 64)))
      {expect("(call $seq_step (local.get $s))", f"(i32.const {Status.WRONG_STATE})", 1)}
      {expect("(call $seq_append (local.get $s) (i32.const 64) (i32.const 40))", "(i32.const 0)", 2)}
      {expect("(call $seq_step (local.get $s))", "(i32.const 0)", 3)}
      {dump}
      {expect("(call $seq_append (local.get $s) (i32.const 224) (i32.const 1))", "(i32.const 0)", 4)}
      {expect("(call $forward_layer (local.get $s) (i32.const 0))", "(i32.const 0)", 5)}
      {expect("(call $seq_step (local.get $s))", "(i32.const 0)", 6)}
      {dump}
      {expect("(call $seq_step (local.get $s))", f"(i32.const {Status.WRONG_STATE})", 7)}
      {expect("(call $seq_len (local.get $s))", "(i32.const 41)", 8)}
      {expect("(call $seq_append (local.get $s) (i32.const 64) (i32.const 3))", "(i32.const 0)", 10)}
      {expect("(call $seq_step_all (local.get $s))", "(i32.const 3)", 11)}
      {expect("(call $seq_len (local.get $s))", "(i32.const 44)", 12)}
      (i32.const 0)"""
    result = TenantSandbox(model).run(compile_wat(body, extra=data_i32(ids, 64)), {})
    assert result.status == Status.OK
    assert_matches(hex_floats(result.text).reshape(2, n_vocab), theirs[39:41], EXACT, "seq_step")
    assert result.trace["seq_step"].calls == 4 and result.trace["seq_step_all"].calls == 1
    assert result.trace["seq_finish"].calls == result.trace["seq_finish_all"].calls == 0


def test_logits_topk_are_the_largest_logits_highest_first(model):
    ids = tokens0(20)
    body = f"""
      {prefill(20)}
      {expect("(call $logits_topk (local.get $s) (i32.const 5) (i32.const 2048) (i32.const 2560))", "(i32.const 5)", 1)}
      {expect(f"(call $logits_read (local.get $s) (i32.const 8192) (i32.const {model.config.n_vocab}))",
              f"(i32.const {model.config.n_vocab})", 2)}
      {hex_dump("(i32.const 5)", 2048, 2560)}
      (i32.const 0)"""
    words = hex_words(TenantSandbox(model).run(compile_wat(body, extra=data_i32(ids, 64)), {}).text)
    logits = model.logits_for(ids.tolist())[-1]
    top = np.argsort(-logits, kind="stable")[:5]
    assert words[0::2] == top.tolist()
    assert np.allclose(hex_floats("".join(f"{w:08x}" for w in words[1::2])), logits[top])


def sample_body(bias: str, n_bias: int, mode: int, expected: int, code: int) -> str:
    return expect(f"(call $sample (local.get $s) (local.get $a) {bias} (i32.const {n_bias}) (i32.const {mode}))",
                  f"(i32.const {expected})", code)


def test_sample_follows_the_guests_mask_and_bias(model):
    n_vocab = model.config.n_vocab
    # 64: prompt ids; 256: ALLOW {17: 0}; 272: ADD {250: +1000}; 8192: DENSE, -inf except token 33
    pairs = np.zeros(4, np.dtype([("t", "<i4"), ("b", "<f4")]))
    pairs[0], pairs[2] = (17, 0.0), (250, 1000.0)
    dense = np.full(n_vocab, -np.inf, "<f4")
    dense[33] = 0.0
    extra = data_i32(tokens0(8), 64) + data_bytes(pairs.tobytes(), 256) + data_bytes(dense.tobytes(), 8192)
    body = f"""
      {prefill(8)}
      (local.set $a (call $sampler_new (local.get $req) (local.get $len)))
      (local.set $i (i32.const 0))
      (loop $again
        {sample_body("(i32.const 256)", 1, 1, 17, 1)}
        {sample_body("(i32.const 272)", 1, 0, 250, 2)}
        {sample_body("(i32.const 8192)", n_vocab, 2, 33, 3)}
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $again (i32.lt_s (local.get $i) (i32.const 20))))
      {sample_body("(i32.const 256)", 0, 1, Status.INVALID_ARGUMENT, 4)}
      {sample_body("(i32.const 8192)", n_vocab - 1, 2, Status.INVALID_ARGUMENT, 5)}
      {sample_body("(i32.const 256)", 1, 7, Status.INVALID_ARGUMENT, 6)}
      {sample_body("(i32.const 8200)", 1, 1, Status.INVALID_ARGUMENT, 7)}
      (i32.const 0)"""
    request = {"temperature": 3.0, "top_k": 0, "min_p": 0.0, "seed": 5}
    assert TenantSandbox(model).run(compile_wat(body, extra=extra), request).status == Status.OK


def test_steps_out_of_order_are_wrong_state_and_bad_values_are_rejected(model):
    n_vocab = model.config.n_vocab
    body = f"""
      (local.set $s (call $seq_open (i32.const 4)))
      {expect("(call $forward_layer (local.get $s) (i32.const 0))", f"(i32.const {Status.WRONG_STATE})", 1)}
      {expect("(call $seq_finish (local.get $s))", f"(i32.const {Status.WRONG_STATE})", 2)}
      {expect("(call $logits_read (local.get $s) (i32.const 1024) (i32.const 1))",
              f"(i32.const {Status.WRONG_STATE})", 3)}
      {expect("(call $seq_append (local.get $s) (i32.const 64) (i32.const 3))", "(i32.const 0)", 4)}
      {expect("(call $forward_layer (local.get $s) (i32.const 1))", f"(i32.const {Status.WRONG_STATE})", 5)}
      {expect("(call $forward_layer (local.get $s) (i32.const 0))", "(i32.const 0)", 6)}
      {expect("(call $seq_append (local.get $s) (i32.const 64) (i32.const 1))", f"(i32.const {Status.WRONG_STATE})", 7)}
      {expect("(call $forward_layer (local.get $s) (i32.const 0))", f"(i32.const {Status.WRONG_STATE})", 8)}
      {expect("(call $seq_finish (local.get $s))", f"(i32.const {Status.WRONG_STATE})", 9)}
      {expect("(call $forward_layer (local.get $s) (i32.const 1))", "(i32.const 0)", 10)}
      {expect("(call $seq_finish (local.get $s))", "(i32.const 0)", 11)}
      {expect("(call $seq_len (local.get $s))", "(i32.const 3)", 12)}
      {expect("(call $seq_append (local.get $s) (i32.const 64) (i32.const 2))", f"(i32.const {Status.CAPACITY})", 13)}
      {expect("(call $seq_append (local.get $s) (i32.const 76) (i32.const 1))",
              f"(i32.const {Status.INVALID_ARGUMENT})", 14)}
      {expect("(call $token_is_eog (i32.const -1))", f"(i32.const {Status.INVALID_ARGUMENT})", 15)}
      {expect(f"(call $token_is_eog (i32.const {n_vocab}))", f"(i32.const {Status.INVALID_ARGUMENT})", 16)}
      {expect("(call $seq_open (i32.const -1))", f"(i32.const {Status.CAPACITY})", 17)}
      {expect("(call $seq_open (i32.const 1000000))", f"(i32.const {Status.CAPACITY})", 18)}
      {expect("(call $tokenize (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 0))",
              f"(i32.const {Status.INVALID_ARGUMENT})", 19)}
      {expect("(call $log (i32.const 9) (i32.const 0) (i32.const 0))", f"(i32.const {Status.INVALID_ARGUMENT})", 20)}
      {expect("(call $seq_truncate (local.get $s) (i32.const 4))", f"(i32.const {Status.INVALID_ARGUMENT})", 21)}
      {expect("(call $seq_len (local.get $s))", "(i32.const 3)", 22)}
      (i32.const 0)"""
    extra = data_i32([1, 20, 30, n_vocab], 64)
    assert TenantSandbox(model).run(compile_wat(body, extra=extra), {}).status == Status.OK


def test_truncate_and_forced_tokens_give_the_logits_of_the_shorter_sequence(model):
    """AICI-style backtracking: after truncating and re-feeding, the top token is what it was."""
    ids = tokens0(12)
    step = """(drop (call $forward_layer (local.get $s) (i32.const 0)))
      (drop (call $forward_layer (local.get $s) (i32.const 1)))
      (drop (call $seq_finish (local.get $s)))"""
    body = f"""
      (local.set $s (call $seq_open (i32.const 0)))
      (drop (call $seq_append (local.get $s) (i32.const 64) (i32.const 10)))
      {step}
      (drop (call $logits_topk (local.get $s) (i32.const 1) (i32.const 1024) (i32.const 1028)))
      (drop (call $seq_append (local.get $s) (i32.const 104) (i32.const 2)))
      {step}
      {expect("(call $seq_truncate (local.get $s) (i32.const 9))", "(i32.const 0)", 1)}
      {expect("(call $logits_read (local.get $s) (i32.const 2048) (i32.const 1))",
              f"(i32.const {Status.WRONG_STATE})", 2)}
      (drop (call $seq_append (local.get $s) (i32.const 100) (i32.const 1)))
      {step}
      (drop (call $logits_topk (local.get $s) (i32.const 1) (i32.const 1032) (i32.const 1036)))
      {expect("(i32.load (i32.const 1024))", "(i32.load (i32.const 1032))", 3)}
      {expect("(call $seq_len (local.get $s))", "(i32.const 10)", 4)}
      (call $hex (i32.load (i32.const 1024)))
      (i32.const 0)"""
    result = TenantSandbox(model).run(compile_wat(body, extra=data_i32(ids, 64)), {})
    assert hex_words(result.text) == [int(model.logits_for(ids[:10].tolist())[-1].argmax())]


def test_several_sequences_of_one_request_are_independent(model):
    ids = tokens0(16)
    body = f"""
      (local.set $a (call $seq_open (i32.const 0)))
      (local.set $b (call $seq_open (i32.const 0)))
      {expect("(i32.eq (local.get $a) (local.get $b))", "(i32.const 0)", 1)}
      (drop (call $seq_append (local.get $a) (i32.const 64) (i32.const 16)))
      (drop (call $seq_append (local.get $b) (i32.const 64) (i32.const 6)))
      (drop (call $forward_layer (local.get $a) (i32.const 0)))
      (drop (call $forward_layer (local.get $b) (i32.const 0)))
      (drop (call $forward_layer (local.get $b) (i32.const 1)))
      (drop (call $forward_layer (local.get $a) (i32.const 1)))
      (drop (call $seq_finish (local.get $b)))
      (drop (call $seq_finish (local.get $a)))
      (drop (call $logits_topk (local.get $a) (i32.const 1) (i32.const 1024) (i32.const 1028)))
      (call $hex (i32.load (i32.const 1024)))
      (drop (call $logits_topk (local.get $b) (i32.const 1) (i32.const 1024) (i32.const 1028)))
      (call $hex (i32.load (i32.const 1024)))
      (i32.const 0)"""
    result = TenantSandbox(model).run(compile_wat(body, extra=data_i32(ids, 64)), {})
    want = [int(model.logits_for(ids[:n].tolist())[-1].argmax()) for n in (16, 6)]
    assert hex_words(result.text) == want


def test_tokenize_and_detokenize_round_trip_through_guest_memory(model):
    text = "Hello, world"
    body = f"""
      (local.set $a (call $tokenize (local.get $req) (local.get $len) (i32.const 1) (i32.const 1024) (i32.const 64)))
      (local.set $b (call $detokenize (i32.const 1024) (local.get $a) (i32.const 2048) (i32.const 256)))
      (drop (call $emit (i32.const 2048) (local.get $b)))
      {expect("(call $detokenize (i32.const 1024) (local.get $a) (i32.const 2048) (i32.const 2))", "(local.get $b)", 1)}
      {hex_dump("(local.get $a)", 1024)}
      (i32.const 0)"""
    sandbox = TenantSandbox(model)
    guest = compile_wat(body)
    # The request is JSON, so the guest tokenizes its own quoted JSON text.
    result = sandbox.run(guest, text)  # type: ignore[arg-type]
    quoted = json.dumps(text)
    ids = model.tokenizer.encode(quoted)
    assert result.text == model.tokenizer.decode(ids) + "".join(f"{i:08x}" for i in ids)


def test_guest_logs_are_kept_with_the_result(model):
    body = """(drop (call $log (i32.const 2) (local.get $req) (local.get $len))) (i32.const 0)"""
    result = TenantSandbox(model).run(compile_wat(body), {"hello": 1})
    assert result.logs == [(2, '{"hello": 1}')]


# --- results and errors ------------------------------------------------------------------------

def test_a_failing_status_names_the_status_and_the_last_host_error(model):
    body = "(call $seq_close (i32.const 12345))"
    with pytest.raises(GuestError, match=r"status -3 \(BAD_HANDLE\).*seq_close: 12345"):
        TenantSandbox(model).run(compile_wat(body), {})


def test_a_python_exception_in_a_host_function_ends_only_that_request(model, generate, monkeypatch):
    def broken(session, memory):
        raise ZeroDivisionError("host bug")

    monkeypatch.setitem(HOST_FUNCTIONS, "broken", HostFunction("broken", (), broken, ""))
    guest = compile_guest(b"""(module (import "realm" "broken" (func $b (result i32)))
      (memory (export "memory") 1) (func (export "realm_alloc") (param i32) (result i32) (i32.const 64))
      (func (export "realm_main") (param i32 i32) (result i32) (call $b)))""")
    with pytest.raises(GuestError, match="host function broken failed: ZeroDivisionError: host bug"):
        TenantSandbox(model).run(guest, {})
    monkeypatch.delitem(HOST_FUNCTIONS, "broken")
    assert TenantSandbox(model).run(generate, {"prompt": PROMPT, "max_tokens": 3}).status == Status.OK


def test_a_module_larger_than_its_memory_limit_does_not_start(model):
    guest = compile_wat("(i32.const 0)", pages=20)
    with pytest.raises(QuotaExceeded, match="memory limit"):
        TenantSandbox(model, Limits(memory_bytes=1 << 20)).run(guest, {})


@pytest.mark.parametrize("private", [None, (object(), None)], ids=["absent", "changed"])
def test_exports_are_found_through_the_public_api_when_wasmtimes_private_one_is_absent_or_changed(
        model, generate, monkeypatch, private):
    monkeypatch.setattr(exports, "_private", private)
    result = TenantSandbox(model).run(generate, {"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
    assert result.text == direct(model, PROMPT, max_tokens=3, temperature=0)
    assert exports._private is None  # a changed private API is not tried again


def test_a_failed_run_is_its_causes_error_and_carries_the_partial_result(model):
    guest = compile_wat("(drop (call $emit (i32.const 100) (i32.const 2))) unreachable",
                        extra='(data (i32.const 100) "hi")')
    with pytest.raises(GuestRunError, match="unreachable") as err:
        TenantSandbox(model).run(guest, {})
    assert isinstance(err.value, GuestError) and isinstance(err.value, GuestRunFailed)
    assert err.value.result.text == "hi" and err.value.result.status == Status.INTERNAL


# --- compilation and the module cache ----------------------------------------------------------

def test_modules_are_compiled_once_per_content_hash():
    text = wat_guest("(i32.const 0)").encode()
    first = compile_guest(text)
    assert compile_guest(text) is first
    import wasmtime

    assert compile_guest(bytes(wasmtime.wat2wasm(text.decode()))) is first  # WAT and binary: one module


@pytest.mark.parametrize("source, message", [
    (b"\x7fELF not wasm at all", "not a WebAssembly module"),
    (b"\0asm\x01\0\0\0\x99garbage", "malformed"),
    (b"(module (func $f", "does not parse"),
    (b'(module (func (export "realm_main") (param i32 i32) (result i32) (i32.const 0)))', "memory"),
    (b'(module (memory (export "memory") 1) (func (export "realm_main") (param i32 i32) (result i32) '
     b'(i32.const 0)))', "realm_alloc"),
    (b'(module (memory (export "memory") 1) (func (export "realm_alloc") (param i32) (result i32) (i32.const 0))'
     b'(func (export "realm_main") (param i32) (result i32) (i32.const 0)))', "realm_main"),
    (b'(module (memory (export "memory") i64 1) (func (export "realm_alloc") (param i32) (result i32) '
     b'(i32.const 0)) (func (export "realm_main") (param i32 i32) (result i32) (i32.const 0)))',
     "memory64 must be enabled"),
])
def test_non_guests_are_rejected_with_a_reason(source, message):
    with pytest.raises(GuestError, match=message):
        compile_guest(source)


def test_oversized_modules_are_rejected_before_parsing():
    with pytest.raises(GuestError, match="over the"):
        compile_guest(b"\0asm" + bytes(MAX_MODULE_BYTES))


def test_guests_get_no_wasi():
    wasi = b"""(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1) (func (export "realm_alloc") (param i32) (result i32) (i32.const 0))
      (func (export "realm_main") (param i32 i32) (result i32) (i32.const 0)))"""
    with pytest.raises(GuestError, match="only from module 'realm'"):
        compile_guest(wasi)


def test_numpy_warnings_from_guest_chosen_values_never_reach_stderr(model, capfd, recwarn):
    """A dense bias spanning the float32 range overflows inside the sampler: the result is checked and
    returned, and the operator's stderr stays clean."""
    n_vocab = model.config.n_vocab
    bias = np.linspace(-3e38, 3e38, n_vocab).astype("<f4")
    params = b'{"temperature": 1e-30, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 1}'
    body = f"""{prefill(1)}
      (local.set $a (call $sampler_new (i32.const 512) (i32.const {len(params)})))
      (call $hex (call $sample (local.get $s) (local.get $a) (i32.const 65536) (i32.const {n_vocab}) (i32.const 2)))
      (i32.const 0)"""
    extra = data_i32([5], 64) + data_bytes(params, 512) + data_bytes(bias.tobytes(), 65536)
    result = TenantSandbox(model).run(compile_wat(body, extra=extra, pages=1 + (4 * n_vocab) // 65536 + 1), {})
    assert hex_words(result.text) == [n_vocab - 1]  # the largest bias wins at a near-zero temperature
    assert capfd.readouterr().err == ""
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_log_lines_cost_a_fixed_overhead_so_empty_lines_are_bounded_too(model):
    body = f"""(loop $l (br_if $l (i32.eq (call $log (i32.const 0) (i32.const 0) (i32.const 0)) (i32.const 0))))
      {expect("(call $log (i32.const 0) (i32.const 0) (i32.const 0))", f"(i32.const {Status.LIMIT})", 1)}
      (i32.const 0)"""
    result = TenantSandbox(model, Limits(max_log_bytes=64 << 10)).run(compile_wat(body), {})
    assert len(result.logs) == (64 << 10) // LOG_LINE_BYTES
