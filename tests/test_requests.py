"""A request as every front end builds it: the one check of its fields (which agrees with the guest's own
parser), its constructors, and its run in the sandbox."""

from __future__ import annotations

import json

import pytest
from guest_helpers import TINY_LLAMA, wat_guest

from host_functions.abi import MAX_I32, AbiError, sampling_params_from_json
from host_functions.engine.model import Model
from host_functions.errors import AdapterError, RealmError, TenantError
from realm.request.fields import MalformedField, RequestFieldError, check_sampling, speculative_drafts
from realm.request.sources import for_bench, from_batch_line, from_flags
from realm.sandbox.intake import reference_guest
from realm.sandbox.run import TenantSandbox
from realm.server.protocol import API_RANGES

FIELDS = [
    {}, {"temperature": 0.5, "top_k": 3, "stop": ["a"], "seed": 9, "prompt": "x", "choices": [1, 2]},
    {"temperature": "hot"}, {"temperature": True}, {"top_p": 2}, {"top_k": 1.5}, {"top_k": -1},
    {"min_p": -0.1}, {"repeat_penalty": 0}, {"repeat_last_n": -2}, {"max_tokens": 0}, {"seed": -1},
    {"seed": 2**64}, {"seed": 2**64 - 1}, {"stop": "one"}, {"stop": [""]}, {"stop": ["a"] * 65},
    {"stop": ["x" * 1025]}, {"stop": ["x" * 1024] * 64}, {"logit_bias": {"5": 1.5}}, {"logit_bias": {"x": 1}},
    {"logit_bias": [1, 2]}, {"logit_bias": {"5": "up"}}, {"logit_bias": None}, {"top_k": 10**31},
    {"top_k": 10**32}, {"repeat_last_n": -(10**30)}, {"repeat_last_n": -(10**31)}, {"temperature": 10**40},
]


@pytest.mark.parametrize("fields", FIELDS, ids=[json.dumps(f)[:40] for f in FIELDS])
def test_the_runtime_refuses_exactly_what_the_guests_sampler_would(fields):
    try:
        sampling_params_from_json(json.dumps(fields).encode())
        refused_by_guest = False
    except AbiError:
        refused_by_guest = True
    if refused_by_guest:
        with pytest.raises(RequestFieldError):
            check_sampling(fields)
    else:
        check_sampling(fields)


def test_max_tokens_beyond_an_i32_is_malformed_though_the_sampler_takes_it():
    with pytest.raises(MalformedField, match=f"out of range \\(at most {MAX_I32}\\)") as err:
        check_sampling({"max_tokens": MAX_I32 + 1})
    assert err.value.field == "max_tokens" and err.value.reason.startswith(str(MAX_I32 + 1))


@pytest.mark.parametrize("fields, field, message", [
    ({"temperature": 2.5}, "temperature", r"temperature must be a number in \[0, 2\]"),
    ({"presence_penalty": -3}, "presence_penalty", "presence_penalty must be a number in"),
    ({"logit_bias": {"5": 101}}, "logit_bias", r"logit_bias must map token ids to numbers in \[-100, 100\]"),
    ({"top_p": 1.5}, None, r"top_p must be in \[0, 1\], got 1.5"),
])
def test_a_front_end_may_narrow_the_ranges(fields, field, message):
    if field is not None:
        check_sampling(fields)  # the host sampler alone takes what the API's ranges refuse
    with pytest.raises(RequestFieldError, match=message) as err:
        check_sampling(fields, API_RANGES)
    assert err.value.field == field


@pytest.mark.parametrize("value, drafts, message", [
    (None, (), None), ("ngram", (), None), ("self:4", (), None), ("sometimes", None, "expected ngram"),
    ("self:x", None, "expected ngram"), (5, None, "got 5"), ("draft:/no/such.gguf", None, "no such draft model"),
])
def test_speculative_takes_its_three_forms(value, drafts, message):
    if message is None:
        assert speculative_drafts(value) == drafts
        return
    with pytest.raises(MalformedField, match=message) as err:
        speculative_drafts(value)
    assert err.value.field == "speculative"


def test_a_draft_file_is_what_its_guest_may_open():
    assert speculative_drafts(f"draft:{TINY_LLAMA}") == (str(TINY_LLAMA),)


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"), ("[1]", "must be a JSON object"), ('{"max_tokens": 2}', 'string "prompt"'),
    ('{"prompt": "x", "top_p": 7}', r"top_p must be in \[0, 1\]"), ('{"prompt": "x", "tenant": 5}', '"tenant" must'),
    ('{"prompt": "x", "tenant": "ghost"}', "no tenant named 'ghost'"),
    ('{"prompt": "x", "lora_mode": "merged"}', 'need a "lora" adapter'),
    ('{"prompt": "x", "lora": "/no/such.gguf"}', "no such LoRA adapter file or folder"),
    ('{"prompt": "x", "speculative": "often"}', "speculative: expected ngram"),
    ('{"prompt": "x", "max_tokens": ' + "9" * 5000 + "}", "not JSON"),
])
def test_a_bad_batch_line_is_one_error_saying_why(line, message):
    with pytest.raises(RealmError, match=message):
        from_batch_line(line)


def test_a_batch_line_runs_the_reference_guest_unless_it_names_a_tenant():
    request = from_batch_line('{"prompt": "x", "stop": "\\n", "speculative": "ngram", "my_field": 1}')
    assert request.fields == {"prompt": "x", "stop": ["\n"], "speculative": "ngram", "my_field": 1}
    assert (request.guest, request.tenant, request.adapters, request.draft_files) == (reference_guest(), "", {}, ())


def test_run_flags_choose_the_guest_and_bind_lora_as_default(tmp_path):
    guest_file = tmp_path / "g.wat"
    guest_file.write_text(wat_guest("(i32.const 0)"))
    request = from_flags({"prompt": "x"}, guest_file=guest_file, lora_file=str(TINY_LLAMA), lora_scale=0.5)
    assert request.guest is not reference_guest() and request.fields == {"prompt": "x", "lora": "default"}
    assert request.adapters["default"].scale == 0.5
    with pytest.raises(AdapterError, match="finite"):
        from_flags({"prompt": "x"}, lora_file=str(TINY_LLAMA), lora_scale=float("inf"))
    with pytest.raises(TenantError, match="no tenant named"):
        from_flags({"prompt": "x"}, tenant="ghost")


def test_a_request_runs_as_the_sandbox_runs_its_guest():
    model = Model.load(TINY_LLAMA, backend="numpy")
    fields = {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    assert for_bench(fields).run(model).text == TenantSandbox(model).run(reference_guest(), fields).text
