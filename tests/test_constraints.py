"""Constrained decoding: llguidance's grammars over our tokenizer (host_functions/constraint) and the
reference guest's "constraint" field through the sandbox, on a tiny real model."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
from guest_helpers import TINY_LLAMA, compile_wat, data_bytes, data_i32, expect

from host_functions.abi import HOST_FUNCTIONS, Limits, SamplerState, SeqState, Session
from host_functions.constraint import Constraint, ConstraintKind, compile_grammar, guidance_tokenizer
from host_functions.engine.model import Model
from host_functions.engine.sampling import Sampler, SamplingParams
from host_functions.errors import RealmError
from realm.request.fields import RequestFieldError, check_sampling
from realm.sandbox.intake import compile_guest, reference_guest_path
from realm.sandbox.report import GuestRunFailed
from realm.sandbox.run import TenantSandbox

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "tags"],
          "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,6}$"},
                         "tags": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"enum": ["x", "y"]}}}}


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(TINY_LLAMA, backend="numpy")


@pytest.fixture(scope="module")
def guest():
    return compile_guest(reference_guest_path().read_bytes())


def _constraint(model: Model, kind: ConstraintKind, text: str) -> Constraint:
    return Constraint(guidance_tokenizer(model.tokenizer), compile_grammar(kind, text))


def test_the_mask_allows_exactly_the_tokens_that_keep_the_text_in_the_grammar(model):
    c = _constraint(model, ConstraintKind.REGEX, "ab+")
    tok = model.tokenizer
    allowed = np.flatnonzero(c.allowed() == 0)
    assert allowed.size > 0 and not any(tok.is_end_of_generation(int(t)) for t in allowed)  # "" is not a match
    assert all(re.fullmatch("ab*", tok.token_bytes(int(t)).decode("utf-8", "replace")) for t in allowed)
    a = int(allowed[0])
    assert c.consume([a]) == 1 and c.refused == 0
    if tok.token_bytes(a) == b"a":
        assert not c.accepting  # "a" alone does not match ab+
    z = tok.encode("z", add_bos=False)[-1]
    assert c.consume([z, a]) == 0 and c.refused == 2  # refused, and everything after it
    assert not c.accepting and not c.complete
    c.rollback(3)  # the two refused tokens, then the one consumed
    assert c.refused == 0
    np.testing.assert_array_equal(np.flatnonzero(c.allowed() == 0), allowed)  # back where it started


def test_end_of_generation_is_allowed_only_once_the_grammar_accepts(model):
    c = _constraint(model, ConstraintKind.REGEX, "[0-9]")
    eog = sorted(model.tokenizer.end_of_generation_ids)
    assert np.isneginf(c.allowed()[eog]).all()
    c.consume(model.tokenizer.encode("7", add_bos=False)[-1:])
    assert c.accepting and (c.allowed()[eog] == 0).all()


@pytest.mark.parametrize(("kind", "text", "cause"), [
    (ConstraintKind.JSON_SCHEMA, '{"type": "objec"}', "Invalid type"),
    (ConstraintKind.JSON_SCHEMA, "[1, 2]", "must be a JSON object"),
    (ConstraintKind.JSON_SCHEMA, "{not json", "invalid json_schema constraint"),
    (ConstraintKind.REGEX, "[a-", "unclosed character class"),
    (ConstraintKind.LARK, "start: undefined_rule\n", "invalid lark constraint"),
    (ConstraintKind.REGEX, "a" * (300 << 10), "at most"),
])
def test_an_invalid_or_too_large_grammar_is_refused_naming_the_cause(kind, text, cause):
    with pytest.raises(RealmError, match=cause):
        compile_grammar(kind, text)


def test_a_request_field_with_a_bad_constraint_is_refused_before_any_guest_runs():
    with pytest.raises(RequestFieldError, match="unclosed") as refused:
        check_sampling({"constraint": {"kind": "regex", "text": "(a"}})
    assert refused.value.field == "constraint"
    with pytest.raises(RequestFieldError, match="kind"):
        check_sampling({"constraint": {"kind": "xml", "text": ""}})


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_the_reference_guest_writes_only_what_the_regex_allows(model, guest, temperature):
    result = TenantSandbox(model, Limits()).run(guest, {
        "prompt": "The year", "max_tokens": 12, "temperature": temperature, "seed": 5,
        "constraint": {"kind": "regex", "text": "[0-9]{4}\\."}})
    assert re.fullmatch(r"[0-9]{4}\.", result.text), result.text
    assert result.finish_reason == "stop"


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_the_reference_guest_writes_json_that_validates(model, guest, temperature):
    result = TenantSandbox(model, Limits()).run(guest, {
        "prompt": "Data:", "max_tokens": 40, "temperature": temperature, "seed": 9,
        "constraint": {"kind": "json_schema", "text": json.dumps(SCHEMA)}})
    assert result.finish_reason == "stop", result.text
    jsonschema.validate(json.loads(result.text), SCHEMA)


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_speculation_under_a_constraint_writes_exactly_what_plain_decoding_does(model, guest, temperature):
    # Prompt lookup drafts from the repeated text, including drafts the grammar refuses; the output is
    # the same token for token (greedy), or valid and seeded alike (sampled).
    request = {"prompt": "ab ab ab ab ab ab ab", "max_tokens": 24, "temperature": temperature, "seed": 1,
               "constraint": {"kind": "regex", "text": "( ab| ba){1,4}( [0-9]+)?"}}
    plain = TenantSandbox(model, Limits()).run(guest, request)
    fast = TenantSandbox(model, Limits()).run(guest, {**request, "speculative": "ngram"})
    assert re.fullmatch(r"( ab| ba){1,4}( [0-9]+)?", fast.text), fast.text
    if temperature == 0:
        assert fast.text == plain.text


def test_a_guest_given_a_bad_grammar_fails_with_invalid_argument_naming_the_cause(model, guest):
    with pytest.raises(GuestRunFailed, match="unclosed character class"):
        TenantSandbox(model, Limits()).run(guest, {"prompt": "x", "constraint": {"kind": "regex", "text": "[a-"}})


def test_the_host_functions_check_kind_state_and_hold_refused_tokens_until_truncated(model):
    # text "[0-9]" at 512; token ids for "7" and "z" at 64 and 68 (the prefill reads from 64).
    seven, zed = model.tokenizer.encode("7", add_bos=False)[-1], model.tokenizer.encode("z", add_bos=False)[-1]
    regex = "(i32.const 512) (i32.const 5)"
    guest = compile_wat(f"""
      (local.set $s (call $seq_open (i32.const 0)))
      {expect(f"(call $constraint_open (local.get $s) (i32.const 9) {regex})", "(i32.const -1)", 1)}
      (local.set $c (call $constraint_open (local.get $s) (i32.const 2) {regex}))
      {expect("(i32.gt_s (local.get $c) (i32.const 0))", "(i32.const 1)", 2)}
      {expect(f"(call $constraint_open (local.get $s) (i32.const 2) {regex})", "(i32.const -4)", 3)}
      {expect("(call $seq_append (local.get $s) (i32.const 68) (i32.const 1))", "(i32.const 0)", 4)}
      {expect("(call $constraint_done (local.get $c))", "(i32.const 0)", 5)}
      {expect("(call $seq_truncate (local.get $s) (i32.const 0))", "(i32.const 0)", 9)}
      {expect("(call $seq_append (local.get $s) (i32.const 64) (i32.const 1))", "(i32.const 0)", 6)}
      {expect("(call $constraint_done (local.get $c))", "(i32.const 1)", 7)}
      {expect("(call $constraint_done (local.get $s))", "(i32.const -3)", 8)}
      (i32.const 0)""", extra=data_i32([seven, zed], 64) + data_bytes(b"[0-9]", 512))
    TenantSandbox(model, Limits()).run(guest, {})


class _Out:
    """Guest memory for spec_verify's one output: every span is valid, the written token is kept."""

    def __init__(self) -> None:
        self.written: list[int] = []

    def span(self, ptr: int, count: int, itemsize: int = 1) -> int:
        return 0

    def write(self, ptr: int, data: np.ndarray) -> int:
        self.written.extend(int(x) for x in data)
        return len(data)


def test_speculative_verification_masks_every_row_with_the_grammar(model):
    s = Session(model, Limits())
    seq = s.handles.add(SeqState(model.open_sequence(64)))
    state = s.handles.get(seq, SeqState)
    digits = [model.tokenizer.encode(d, add_bos=False)[-1] for d in "123"]
    state.seq.append([1])
    for layer in range(model.config.n_layers):
        state.seq.forward_layer(layer)
    state.set_logits(state.seq.finish())
    state.constraint, state.constrained_from = _constraint(model, ConstraintKind.REGEX, "[0-9]{2}x"), 1
    state.constraint.consume(digits)  # a token and two drafts, as seq_append consumes them: "3" is refused
    assert state.constraint.refused == 1
    state.seq.append(digits)
    for layer in range(model.config.n_layers):
        state.seq.forward_layer(layer)
    state.set_rows(state.seq.finish(all_positions=True))
    sampler = s.handles.add(SamplerState(Sampler(SamplingParams(temperature=0))))
    out = _Out()
    accepted = HOST_FUNCTIONS["spec_verify"].impl(s, out, seq, sampler, 0, 0)
    following = out.written[0]
    # Whatever the tiny model prefers, the refused draft is rejected and the token after the accepted
    # drafts is one the grammar allows there.
    assert 0 <= accepted <= 1
    allowed_next = "x" if accepted == 1 else "0123456789"
    assert model.tokenizer.token_bytes(following).decode() in allowed_next
    assert state.constraint.refused == 1  # until the guest truncates the rejected tail
    assert HOST_FUNCTIONS["seq_truncate"].impl(s, out, seq, 2 + accepted) == 0
    assert state.constraint.refused == 0 and len(state.constraint.masks_along([])) == 1
