"""The server's rules without a server: OpenAI request checks, guest requests, rate windows, and the
ABI pieces serving added (logit_bias, token_logprobs, cancellation) on the tiny model."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from guest_helpers import TINY_LLAMA, compile_wat, data_i32, expect, prefill
from oracle import reference_sequences

from host_functions.abi import Limits, TokenLogprob
from host_functions.engine.model import Model
from host_functions.engine.sampling import Sampler, SamplingParams
from host_functions.errors import RequestCancelled
from realm.chat import load_chat_template
from realm.sandbox.intake import reference_guest
from realm.sandbox.report import GuestRunCancelled
from realm.sandbox.run import TenantSandbox
from realm.server import protocol
from realm.server.bodies import parse_json
from realm.server.context_limits import request_limits
from realm.server.protocol import ApiError, RequestLimits
from realm.server.ratelimit import RateLimiter, Reservation, TooLarge
from realm.tenants import Tenant

MODEL_ID = "tiny"
LIMITS = RequestLimits(n_ctx=256, max_request_tokens=200, default_max_tokens=16, max_prompt_tokens=100,
                       n_vocab=32000)


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(TINY_LLAMA, backend="numpy")


def completion(model, **body):
    return protocol.parse_completion({"model": MODEL_ID, "prompt": "Once upon a time", **body}, MODEL_ID,
                                     model.tokenizer, LIMITS)


def refused(status: int, match: str, call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError, match=match) as caught:
        call(*args, **kwargs)
    assert caught.value.status == status
    return caught.value


# --- request checks --------------------------------------------------------------------------

def test_a_completion_becomes_one_guest_request_per_choice_with_spread_seeds(model):
    spec = completion(model, max_tokens=5, temperature=0.7, seed=3, n=2, stop="\n", top_k=10, my_field=[1])
    requests = spec.guest_requests()
    assert [i for i, _ in requests] == [0, 1]
    assert requests[0][1] == {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0.7, "seed": 3,
                              "stop": ["\n"], "top_k": 10, "my_field": [1]}
    assert requests[1][1]["seed"] == 4  # the choices of one seeded request differ, reproducibly
    assert spec.prompt_tokens == (len(model.tokenizer.encode("Once upon a time")),)


def test_openai_defaults_and_server_fields_stay_out_of_the_guest_request(model):
    spec = completion(model, stream=True, user="me", n=None, logprobs=None)
    (index, request), = spec.guest_requests()
    assert request == {"prompt": "Once upon a time", "max_tokens": 16} and spec.stream
    assert "logprobs" not in request and spec.top_logprobs is None


@pytest.mark.parametrize("body, match", [
    ({"max_tokens": 0}, "max_tokens must be a positive"),
    ({"max_tokens": 190}, "over the 200 of the tenant.s max_tokens limit"),
    ({"temperature": 3}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 9}, "n must be"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop must be"),
    ({"stop": [""]}, "stop must be"),
    ({"logprobs": 6}, "logprobs must be"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"x": 1}}, "logit_bias keys"),
    ({"seed": 1.5}, "seed must be"),
    ({"echo": True}, "echo is not supported"),
    ({"prompt": [1, 2, 3]}, "token-id prompts"),
    ({"prompt": []}, "prompt must be a string"),
    ({"prompt": "word " * 100}, "no room for an answer in the 200"),
])
def test_bad_fields_are_400_before_any_guest_runs(model, body, match):
    error = refused(400, match, completion, model, **body)
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_an_unknown_or_missing_model_is_404_or_400(model):
    assert refused(404, "does not exist", protocol.parse_completion, {"model": "x", "prompt": "a"}, MODEL_ID,
                   model.tokenizer, LIMITS).code == "model_not_found"
    refused(400, "model is required", protocol.parse_completion, {"prompt": "a"}, MODEL_ID, model.tokenizer, LIMITS)
    refused(400, "JSON object", protocol.parse_completion, ["a"], MODEL_ID, model.tokenizer, LIMITS)


def test_a_chat_is_rendered_parsed_as_special_and_asks_for_logprobs(model):
    template = load_chat_template(model.tokenizer, "llama", "chatml")
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "logprobs": True, "top_logprobs": 2, "max_completion_tokens": 3}
    spec = protocol.parse_chat(body, MODEL_ID, model.tokenizer, template, LIMITS)
    (_, request), = spec.guest_requests()
    assert request == {"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "max_tokens": 3,
                       "special": True, "logprobs": 2}
    refused(400, "role must be", protocol.parse_chat, {**body, "messages": [{"role": "x", "content": "a"}]},
            MODEL_ID, model.tokenizer, template, LIMITS)
    refused(400, "only text parts", protocol.parse_chat,
            {**body, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            MODEL_ID, model.tokenizer, template, LIMITS)
    refused(400, "top_logprobs needs", protocol.parse_chat, {**body, "logprobs": False}, MODEL_ID,
            model.tokenizer, template, LIMITS)


def test_logprobs_take_openais_two_shapes(model):
    entries = [TokenLogprob(300, -0.5, ((300, -0.5), (301, -1.5)))]
    tok = model.tokenizer
    chat = protocol.format_logprobs(protocol.parse_chat(
        {"model": MODEL_ID, "messages": [{"role": "user", "content": "a"}], "logprobs": True},
        MODEL_ID, tok, load_chat_template(tok, "llama", "chatml"), LIMITS), entries, tok)
    piece = tok.token_bytes(300)
    assert chat["content"][0] == {"token": piece.decode(), "logprob": -0.5, "bytes": list(piece),
                                  "top_logprobs": [{"token": piece.decode(), "logprob": -0.5, "bytes": list(piece)},
                                                   {"token": tok.token_bytes(301).decode(), "logprob": -1.5,
                                                    "bytes": list(tok.token_bytes(301))}]}
    plain = protocol.format_logprobs(completion(model, logprobs=2), entries, tok)
    assert plain["tokens"] == [piece.decode()] and plain["token_logprobs"] == [-0.5] and plain["text_offset"] == [0]


# --- rate limits -----------------------------------------------------------------------------

def test_request_and_token_windows_are_per_tenant_and_slide():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.admit("a", 2, 0) is None and limiter.admit("a", 2, 0) is None
    assert limiter.admit("a", 2, 0) == ("requests", 60)
    assert limiter.admit("b", 2, 0) is None  # another tenant's window
    now[0] = 45.0
    assert limiter.admit("a", 2, 0) == ("requests", 15)
    now[0] = 60.0
    assert limiter.admit("a", 2, 0) is None
    assert isinstance(limiter.reserve("c", 100, 100), Reservation)
    assert limiter.admit("c", 0, 100) == ("tokens", 60)
    assert limiter.admit("c", 0, 0) is None  # 0 is unlimited


def test_tokens_are_reserved_at_admission_and_the_unused_part_refunded():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    first = limiter.reserve("a", 200, 300)
    assert isinstance(first, Reservation)
    assert limiter.reserve("a", 200, 300) == 60  # 200 more do not fit until the first leaves the window
    assert isinstance(limiter.reserve("b", 300, 300), Reservation)  # another tenant's window is its own
    now[0] = 10.0
    limiter.settle(first, 50)  # it used 50 of its 200
    second = limiter.reserve("a", 200, 300)
    assert isinstance(second, Reservation)
    assert limiter.reserve("a", 100, 300) == 50  # 250 held: room for 100 when the first (50) expires at 60 s
    limiter.settle(second, 0)
    assert isinstance(limiter.reserve("a", 250, 300), Reservation)
    with pytest.raises(TooLarge, match="301 tokens over a limit of 300"):
        limiter.reserve("a", 301, 300)  # can never fit, however long it waits
    assert isinstance(limiter.reserve("a", 10**9, 0), Reservation)  # 0 is unlimited


def test_a_reservation_settled_after_it_left_the_window_charges_nothing():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    held = limiter.reserve("a", 100, 100)
    assert isinstance(held, Reservation)
    now[0] = 61.0
    assert isinstance(limiter.reserve("a", 100, 100), Reservation)  # the first expired
    limiter.settle(held, 100)  # a long request ends after its reservation expired
    assert limiter.reserve("a", 1, 100) == 60
    assert limiter.admit("a", 0, 100) == ("tokens", 60)


def test_a_guest_that_used_more_than_it_reserved_is_charged_what_it_used():
    limiter = RateLimiter(clock=lambda: 0.0)
    held = limiter.reserve("a", 10, 100)
    assert isinstance(held, Reservation)
    limiter.settle(held, 95)
    assert limiter.reserve("a", 10, 100) == 60 and isinstance(limiter.reserve("a", 5, 100), Reservation)


# --- the ABI pieces serving needs ------------------------------------------------------------

def test_logit_bias_is_added_before_the_chain():
    logits = np.array([0.0, 1.0, 5.0, 2.0], np.float32)
    assert Sampler(SamplingParams(temperature=0)).sample(logits, []) == 2
    assert Sampler(SamplingParams(temperature=0, logit_bias=((2, -100.0),))).sample(logits, []) == 3
    assert Sampler(SamplingParams(temperature=0, logit_bias=((0, 10.0),))).sample(logits, []) == 0


def test_token_logprobs_reports_llama_cpps_next_token_distribution(model):
    # Feed llama.cpp's reference tokens, then report the argmax token with its 4 best alternatives.
    tokens, theirs = reference_sequences("tiny-llama-F32.logits.npz")[0]
    expected = theirs[-1].astype(np.float64) - np.log(np.exp(theirs[-1].astype(np.float64)).sum())
    best = int(np.argmax(expected))
    body = prefill(len(tokens)) + expect(f"(call $token_logprobs (local.get $s) (i32.const {best}) (i32.const 4))",
                                         "(i32.const 0)", 10) + "(i32.const 0)"
    result = TenantSandbox(model).run(compile_wat(body, extra=data_i32(tokens, 64)), {})
    (entry,) = result.logprobs
    assert entry.token == best and [t for t, _ in entry.top] == list(np.argsort(-expected)[:4])
    assert abs(entry.logprob - expected[best]) < 1e-3
    assert all(abs(lp - expected[t]) < 1e-3 for t, lp in entry.top)


def test_token_logprobs_checks_its_arguments(model):
    def logprobs(seq: str, token: int, k: int) -> str:
        return f"(call $token_logprobs {seq} (i32.const {token}) (i32.const {k}))"

    seq = "(local.get $s)"
    guest = compile_wat("\n".join([
        prefill(2),
        expect(logprobs(seq, 1, 21), "(i32.const -1)", 11),  # more alternatives than OpenAI allows
        expect(logprobs(seq, 320, 1), "(i32.const -1)", 12),  # outside the vocabulary
        expect(logprobs("(i32.const 12345)", 1, 1), "(i32.const -3)", 13),  # not a handle
        expect(logprobs(seq, 1, 2), "(i32.const 0)", 14),
        "(i32.const 0)"]))
    result = TenantSandbox(model).run(guest, {"prompt": "x"})
    assert [(e.token, len(e.top)) for e in result.logprobs] == [(1, 2)]


def test_a_cancelled_request_ends_at_its_next_host_call_and_frees_its_sequences(model):
    guest = reference_guest()
    flag = threading.Event()
    emitted: list[str] = []

    def on_text(text: str) -> None:
        emitted.append(text)
        flag.set()  # the client goes away after the first piece

    with pytest.raises(GuestRunCancelled) as caught:
        TenantSandbox(model, Limits()).run(guest, {"prompt": "Once upon a time", "max_tokens": 200,
                                                   "temperature": 0}, on_text=on_text, cancel=flag)
    assert isinstance(caught.value, RequestCancelled)  # what the server answers as a cancelled request
    assert len(emitted) == 1 and caught.value.result.tokens_fed < 20


# --- bodies and fields a client builds to crash the server -------------------------------------

@pytest.mark.parametrize("data", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 33 + b"1" + b"}" * 33,
                                  b'"\\ud800"', b'{"\\udfff": 1}', b'["fine", ["\\udc80x"]]', b"\xff{}", b"{nope",
                                  b'{"seed": ' + b"9" * 5000 + b"}", b'{"temperature": NaN}', b"[-Infinity]",
                                  b'{"top_p": 1e999}'])
def test_bodies_too_deep_not_unicode_or_not_json_are_400_invalid_json(data):
    error = refused(400, "JSON|nests|Unicode", parse_json, data)
    assert error.code == "invalid_json"


def test_a_body_within_the_depth_with_paired_surrogates_parses():
    assert parse_json(b'{"a": ' * 31 + b'"\\ud83d\\ude00"' + b"}" * 31) is not None
    assert parse_json('{"prompt": "raw \u2028 and \U0001f600"}'.encode()) == {"prompt": "raw \u2028 and \U0001f600"}


@pytest.mark.parametrize("bias", [{"32000": 1}, {"-1": 1}, {"1" * 5000: 1}, {"x": 1}, {"²": 1}])
def test_logit_bias_ids_outside_the_vocabulary_are_400_naming_the_field(model, bias):
    assert refused(400, "logit_bias", completion, model, max_tokens=1, logit_bias=bias).param == "logit_bias"
    assert completion(model, max_tokens=1, logit_bias={"31999": 1}).guest_fields["logit_bias"] == {"31999": 1}


@pytest.mark.parametrize("name", ["self:²", "self:١", "self:", "draft:/etc/hosts", "draft:\x00", "self:1\x00", 3])
def test_speculative_is_ngram_or_self_n_in_ascii_digits(model, name):
    assert refused(400, "speculative", completion, model, max_tokens=1, speculative=name).param == "speculative"
    assert completion(model, max_tokens=1, speculative="self:1").guest_fields["speculative"] == "self:1"


def test_a_request_reserves_its_prompts_and_max_tokens_for_every_choice(model):
    spec = protocol.parse_completion({"model": MODEL_ID, "prompt": ["a b", "c"], "max_tokens": 5, "n": 3}, MODEL_ID,
                                     model.tokenizer, LIMITS)
    assert spec.most_tokens() == sum(spec.prompt_tokens) + 5 * 3 * 2


def test_text_pieces_coalesce_per_choice_into_bounded_events_with_their_logprobs():
    from realm.server.runner import Piece
    from realm.server.streaming import MAX_EVENT_CHARS, coalesced

    done = RuntimeError("outcome")
    lp1, lp2 = TokenLogprob(1, -0.5, ()), TokenLogprob(2, -1.5, ())
    events = [(0, Piece("a", (lp1,))), (0, Piece("b", (lp2,))), (1, Piece("c")),
              (0, Piece("x" * (MAX_EVENT_CHARS + 5), (lp1,))), (0, done), (1, Piece("d")), (1, Piece("", (lp2,)))]
    assert list(coalesced(events)) == [(0, Piece("ab", (lp1, lp2))), (1, Piece("c")),
                                       (0, Piece("x" * MAX_EVENT_CHARS, (lp1,))), (0, Piece("xxxxx")), (0, done),
                                       (1, Piece("d", (lp2,)))]


def test_a_draft_name_a_guest_passes_is_refused_not_a_host_crash(model):
    from host_functions.errors import RealmError
    from realm.models import draft_opener

    open_draft = draft_opener(model, "numpy")
    for name in ("self:²", "self:", "self:1x"):
        with pytest.raises(RealmError, match="self:N"):
            open_draft(name)
    assert open_draft("draft:a\x00b") is None and open_draft("\x00") is None


def test_a_prompt_too_many_bytes_for_the_token_limit_is_refused_before_tokenizing(model):
    longest = protocol.max_token_bytes(model.tokenizer)
    assert all(len(model.tokenizer.token_bytes(i)) <= longest for i in model.tokenizer.encode("Once upon a time"))
    fits = "a" * (2 * LIMITS.max_prompt_tokens * longest)  # might hold few enough tokens: it is tokenized (and counted)
    refused(400, "tokens", completion, model, prompt=fits, max_tokens=1)  # too long, found by tokenizing
    error = refused(400, r"bytes, more than 100 tokens", completion, model, prompt=fits + "a", max_tokens=1)
    assert error.code == "prompt_too_long" and error.param == "prompt"
    chat = protocol.parse_chat
    template = load_chat_template(model.tokenizer, model.config.arch, "chatml")
    error = refused(400, "bytes", chat, {"model": MODEL_ID, "messages": [{"role": "user", "content": fits}]}, MODEL_ID,
                    model.tokenizer, template, LIMITS)
    assert error.param == "messages"


def test_off_loop_work_is_bounded_per_tenant_and_never_queues_another_tenant_behind_it():
    import asyncio

    from realm.server.offloop import OffLoop

    release = threading.Event()

    async def scenario() -> None:
        off = OffLoop(threads=8, per_tenant=2, max_waiting=3)
        flood = [asyncio.ensure_future(off.run_for("flood", release.wait, 60)) for _ in range(5)]  # 2 run, 3 wait
        for _ in range(3000):  # until all five are in hand (bounded, should the count never get there)
            if off.pending == 5:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(ApiError, match="waiting") as too_many:
            await off.run_for("flood", release.wait, 60)
        assert too_many.value.status == 429 and too_many.value.headers["Retry-After"] == "1"
        assert await off.run_for("benign", lambda: "served") == "served"  # not behind the flood's queue
        release.set()
        assert await asyncio.gather(*flood) == [True] * 5
        assert off.pending == 0 and await off.run_for("flood", lambda: 7) == 7

    asyncio.run(scenario())


def test_context_errors_are_context_length_exceeded_naming_the_limit_that_applies(model):
    tenant = Tenant("acme", 0.0, Limits(max_context=64, max_tokens=200))
    limits = request_limits(tenant, model_context=2048, ctx_size=0, default_max_tokens=16, max_prompt_tokens=0,
                            n_vocab=model.config.n_vocab)
    assert (limits.n_ctx, limits.max_prompt_tokens) == (64, 64)
    long_prompt = {"model": MODEL_ID, "prompt": "word " * 70}
    error = refused(400, "no room for an answer in the 64 of tenant 'acme''s max_context limit",
                    protocol.parse_completion, long_prompt, MODEL_ID, model.tokenizer, limits)
    assert error.code == "context_length_exceeded" and "realm tenant set-limits acme max_context=N" in error.message
    error = refused(400, "over the 64 of tenant 'acme''s max_context", protocol.parse_completion,
                    {**long_prompt, "prompt": "word", "max_tokens": 100}, MODEL_ID, model.tokenizer, limits)
    assert error.code == "context_length_exceeded" and error.param == "max_tokens"
    roomy = request_limits(dataclasses.replace(tenant, limits=Limits(max_context=4096)), 2048, 0, 16, 0, 32000)
    refused(400, "over the 2048 of this model's maximum context length", protocol.parse_completion,
            {**long_prompt, "prompt": "word", "max_tokens": 2048}, MODEL_ID, model.tokenizer, roomy)
    capped = request_limits(tenant, 2048, 32, 16, 0, 32000)
    refused(400, "over the 32 of this server's --ctx-size", protocol.parse_completion,
            {**long_prompt, "prompt": "word", "max_tokens": 40}, MODEL_ID, model.tokenizer, capped)
