"""Hostile guests: each one ends its own request with a clear error, the host survives, and another
tenant running at the same time gets exactly the output it gets alone."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest
from guest_helpers import TINY_LLAMA, compile_wat, data_bytes, data_i32, expect, hex_words, prefill

from host_functions.abi import Limits, Status
from host_functions.abi.limits import MAX_JSON_BYTES, MAX_STOP_STRINGS, MAX_TOKENIZE_BYTES
from host_functions.engine.model import Model
from host_functions.errors import GuestError, QuotaExceeded, RealmError
from realm.sandbox.intake import GuestModule, compile_guest, reference_guest, reference_guest_path
from realm.sandbox.report import GuestRunFailed
from realm.sandbox.run import TenantSandbox
from realm.tenants import TenantRegistry

PROMPT = "Once upon a time"
GOOD_REQUEST = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0.9, "seed": 7}
# The well-behaved tenant's own deadline: generous for a loaded 2-core machine, but a stalled host misses it.
GOOD_LIMITS = Limits(wall_seconds=30)
SLACK_S = 2.0
BIG = 65536  # attacks build their large inputs from the second page of memory up
BAD_POINTER, BAD_HANDLE = int(Status.BAD_POINTER), int(Status.BAD_HANDLE)


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(TINY_LLAMA, backend="numpy")


@pytest.fixture(scope="module")
def good() -> GuestModule:
    return reference_guest()


@pytest.fixture(scope="module")
def alone(model, good) -> str:
    """What the well-behaved tenant outputs when it runs alone."""
    return TenantSandbox(model).run(good, GOOD_REQUEST).text


def layers(seq: str = "$s") -> str:
    """WAT: run both layers of the tiny model over the pending tokens and finish the step."""
    return f"""(drop (call $forward_layer (local.get {seq}) (i32.const 0)))
      (drop (call $forward_layer (local.get {seq}) (i32.const 1)))
      (drop (call $seq_finish (local.get {seq})))"""


def expect_each(calls: list[str], status: int) -> str:
    """WAT checking that every call returns `status`; the k-th failing check returns k + 1."""
    return "\n".join(expect(c, f"(i32.const {status})", k + 1) for k, c in enumerate(calls))


@dataclass(frozen=True)
class Hostile:
    """A hostile guest, the limits it runs under, and the error that must end its request."""

    body: str
    error: type[RealmError]
    match: str
    limits: Limits = Limits()
    extra: str = ""
    pages: int = 1

    def run(self, model: Model) -> None:
        guest = compile_wat(self.body, extra=self.extra, pages=self.pages)
        with pytest.raises(self.error, match=self.match) as err:
            TenantSandbox(model, self.limits, tenant="hostile").run(guest, {"prompt": PROMPT})
        # ended within its wall clock, give or take one host call's check interval on a loaded machine
        assert isinstance(err.value, GuestRunFailed)
        assert err.value.result.seconds < self.limits.wall_seconds + SLACK_S


def bad_pointer_body() -> str:
    """Every pointer-taking host function with negative, overflowing and out-of-bounds pairs."""
    calls = [
        "(call $emit (i32.const -1) (i32.const 4))",
        "(call $emit (i32.const 0) (i32.const -1))",
        "(call $emit (i32.const 2147483647) (i32.const 2147483647))",
        "(call $emit (i32.const 65535) (i32.const 2))",
        "(call $log (i32.const 1) (i32.const 65520) (i32.const 2147483632))",
        "(call $model_info (i32.const 65530) (i32.const 40))",
        "(call $tokenize (i32.const -8) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0))",
        "(call $tokenize (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 65532) (i32.const 2))",
        "(call $detokenize (i32.const 0) (i32.const 1073741824) (i32.const 0) (i32.const 0))",
        "(call $detokenize (i32.const 64) (i32.const 1) (i32.const -1) (i32.const 8))",
        "(call $token_piece (i32.const 5) (i32.const 65536) (i32.const 1))",
        "(call $seq_append (local.get $s) (i32.const -4) (i32.const 1))",
        "(call $seq_append (local.get $s) (i32.const 0) (i32.const 1073741824))",
        "(call $logits_read (local.get $s) (i32.const 65532) (i32.const 2))",
        "(call $logits_read (local.get $s) (i32.const 0) (i32.const -1))",
        "(call $logits_topk (local.get $s) (i32.const 4) (i32.const -16) (i32.const 0))",
        "(call $logits_topk (local.get $s) (i32.const 4) (i32.const 0) (i32.const 65530))",
        "(call $sampler_new (i32.const -5) (i32.const 5))",
        "(call $sample (local.get $s) (local.get $a) (i32.const 65535) (i32.const 1) (i32.const 0))",
        "(call $sample (local.get $s) (local.get $a) (i32.const 0) (i32.const 536870912) (i32.const 2))",
        "(call $text_push (local.get $s) (i32.const 5) (i32.const 2147483647) (i32.const 1))",
    ]
    checks = expect_each(calls, BAD_POINTER)
    return f"""
      (local.set $s (call $seq_open (i32.const 0)))
      (drop (call $seq_append (local.get $s) (i32.const 64) (i32.const 1)))
      {layers()}
      (local.set $a (call $sampler_new (local.get $req) (local.get $len)))
      {checks}
      (i32.const {BAD_POINTER})"""


def forged_handle_body() -> str:
    calls = [
        "(call $seq_len (i32.const 12345))",
        "(call $seq_close (i32.const 0))",
        "(call $seq_close (i32.const -1))",
        "(call $forward_layer (i32.const 2147483647) (i32.const 0))",
        "(call $seq_append (i32.const 1) (i32.const 64) (i32.const 1))",
        "(call $seq_finish (i32.const 7))",
        "(call $seq_truncate (i32.const 99) (i32.const 0))",
        "(call $logits_read (i32.const 3) (i32.const 1024) (i32.const 1))",
        "(call $text_push (i32.const 3) (i32.const 5) (i32.const 1024) (i32.const 8))",
        "(call $sample (local.get $s) (i32.const 424242) (i32.const 0) (i32.const 0) (i32.const 0))",
        # a handle of the wrong kind is as bad as a forged one
        "(call $sampler_free (local.get $s))",
        "(call $seq_len (local.get $a))",
        "(call $sample (local.get $a) (local.get $s) (i32.const 0) (i32.const 0) (i32.const 0))",
    ]
    checks = expect_each(calls, BAD_HANDLE)
    return f"""
      (local.set $s (call $seq_open (i32.const 0)))
      (local.set $a (call $sampler_new (local.get $req) (local.get $len)))
      {checks}
      {expect("(call $seq_len (local.get $s))", "(i32.const 0)", 99)}
      (i32.const {BAD_HANDLE})"""


def closed_handle_body() -> str:
    return f"""
      (local.set $s (call $seq_open (i32.const 0)))
      (drop (call $seq_append (local.get $s) (i32.const 64) (i32.const 1)))
      {layers()}
      {expect("(call $seq_close (local.get $s))", "(i32.const 0)", 1)}
      {expect("(call $seq_close (local.get $s))", f"(i32.const {BAD_HANDLE})", 2)}
      {expect("(call $seq_len (local.get $s))", f"(i32.const {BAD_HANDLE})", 3)}
      {expect("(call $logits_read (local.get $s) (i32.const 1024) (i32.const 4))", f"(i32.const {BAD_HANDLE})", 4)}
      {expect("(call $seq_append (local.get $s) (i32.const 64) (i32.const 1))", f"(i32.const {BAD_HANDLE})", 5)}
      (local.set $a (call $sampler_new (local.get $req) (local.get $len)))
      {expect("(call $sampler_free (local.get $a))", "(i32.const 0)", 6)}
      {expect("(call $sampler_free (local.get $a))", f"(i32.const {BAD_HANDLE})", 7)}
      (call $seq_len (local.get $s))"""


def generate_then_trap_body(n_tokens: int) -> str:
    """Real generation (prompt ids at 64) for n_tokens, emitting text, then a trap."""
    return f"""
      (local.set $s (call $seq_open (i32.const 0)))
      (local.set $a (call $sampler_new (local.get $req) (local.get $len)))
      (drop (call $seq_append (local.get $s) (i32.const 64) (global.get $n_prompt)))
      (loop $token
        {layers()}
        (i32.store (i32.const 1024) (call $sample (local.get $s) (local.get $a) (i32.const 0) (i32.const 0)
                                          (i32.const 0)))
        (local.set $b (call $text_push (local.get $s) (i32.load (i32.const 1024)) (i32.const 2048) (i32.const 256)))
        (drop (call $emit (i32.const 2048) (local.get $b)))
        (drop (call $seq_append (local.get $s) (i32.const 1024) (i32.const 1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $token (i32.lt_s (local.get $i) (i32.const {n_tokens}))))
      unreachable"""


def fill(byte: int, n: int, at: int = BIG) -> str:
    """WAT: n bytes of `byte` at `at`."""
    return f"(memory.fill (i32.const {at}) (i32.const {byte}) (i32.const {n}))"


def pages_for(n_bytes: int) -> int:
    return (BIG + n_bytes) // 65536 + 1


def json_attack(data: bytes, match: str) -> Hostile:
    """A guest that passes `data` to sampler_new and returns what it says as its status."""
    return Hostile(f"(call $sampler_new (i32.const {BIG}) (i32.const {len(data)}))", GuestError, match,
                   extra=data_bytes(data, BIG), pages=pages_for(len(data)))


def prompt_data(model: Model) -> str:
    ids = model.tokenizer.encode(PROMPT)
    return data_i32(ids, 64) + f"(global $n_prompt i32 (i32.const {len(ids)}))"


def hostile_cases(model: Model) -> dict[str, Hostile]:
    ids = prompt_data(model)
    return {
        "infinite loop": Hostile("(loop $l (br $l)) (i32.const 0)", QuotaExceeded, "CPU budget",
                                 Limits(fuel=20_000_000)),
        "infinite loop past the wall clock": Hostile("(loop $l (br $l)) (i32.const 0)", QuotaExceeded, "wall-clock",
                                                     Limits(fuel=10**15, wall_seconds=0.3)),
        "host-call loop past the wall clock": Hostile(
            "(loop $l (drop (call $token_is_eog (i32.const 1))) (br $l)) (i32.const 0)", QuotaExceeded,
            "wall-clock", Limits(fuel=10**15, wall_seconds=0.3)),
        "unbounded memory.grow": Hostile(
            "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable",
            GuestError, "memory is at the 4194304 byte limit", Limits(memory_bytes=4 << 20)),
        "memory.grow forever": Hostile("(loop $l (drop (memory.grow (i32.const 1))) (br $l)) (i32.const 0)",
                                       QuotaExceeded, "CPU budget", Limits(memory_bytes=4 << 20, fuel=5_000_000)),
        "bad pointers": Hostile(bad_pointer_body(), GuestError, r"status -2 \(BAD_POINTER\)", extra=ids),
        "forged handles": Hostile(forged_handle_body(), GuestError, r"status -3 \(BAD_HANDLE\)", extra=ids),
        "closed handles": Hostile(closed_handle_body(), GuestError, r"status -3 \(BAD_HANDLE\)", extra=ids),
        "trap halfway through generation": Hostile(generate_then_trap_body(6), GuestError,
                                                   "guest trapped: .*unreachable", extra=ids),
        "10,000 sequences": Hostile(
            "(loop $l (drop (call $seq_open (i32.const 0))) (local.set $i (i32.add (local.get $i) (i32.const 1)))"
            " (br_if $l (i32.lt_s (local.get $i) (i32.const 10000)))) (i32.const 0)",
            QuotaExceeded, "limit of 16 live sequences"),
        "emit without end": Hostile("(loop $l (drop (call $emit (i32.const 0) (i32.const 64))) (br $l)) (i32.const 0)",
                                    QuotaExceeded, "emitted more than its limit of 262144 bytes"),
        "token flood": Hostile(
            f"""(local.set $s (call $seq_open (i32.const 0)))
            (loop $l (drop (call $seq_append (local.get $s) (i32.const 64) (global.get $n_prompt))) {layers()}
              (br $l)) (i32.const 0)""", QuotaExceeded, "fed more than its limit of 64 tokens",
            Limits(max_tokens=64), extra=ids),
        "host-call flood": Hostile("(loop $l (drop (call $seq_len (i32.const 5))) (br $l)) (i32.const 0)",
                                   QuotaExceeded, "more than its limit of 20000 host calls",
                                   Limits(max_host_calls=20_000)),
        "tokenizer flood": Hostile(  # 64 KiB of memory, tokenized over and over: host work, no fuel
            "(loop $l (drop (call $tokenize (i32.const 0) (i32.const 65536) (i32.const 0) (i32.const 0)"
            " (i32.const 0))) (br $l)) (i32.const 0)", QuotaExceeded, "more than its limit of 1048576 bytes of text",
            Limits(max_text_bytes=1 << 20)),
        "infinite recursion": Hostile("(call $deep) (i32.const 0)", GuestError, "guest trapped",
                                      extra="(func $deep (call $deep))"),
        "a table of 10M elements": Hostile("(i32.const 0)", QuotaExceeded, "limit of 100000 table elements",
                                           extra="(table 10000000 funcref)"),
        "infinite loop in the start function": Hostile(
            "(i32.const 0)", QuotaExceeded, "CPU budget", Limits(fuel=5_000_000),
            extra="(func $spin (loop $l (br $l))) (start $spin)"),
        # Sizes the guest passes are checked before the host parses, converts or allocates for them.
        "JSON nested 100,000 deep": Hostile(
            fill(ord("["), 100_000) + "(call $sampler_new (i32.const 65536) (i32.const 100000))", GuestError,
            r"INVALID_ARGUMENT.*nested deeper than 64", pages=pages_for(100_000)),
        "JSON over its byte limit": Hostile(
            fill(ord(" "), MAX_JSON_BYTES + 1)
            + f"(call $sampler_new (i32.const {BIG}) (i32.const {MAX_JSON_BYTES + 1}))",
            GuestError, "INVALID_ARGUMENT.*over the limit", pages=pages_for(MAX_JSON_BYTES + 1)),
        "JSON number of 5000 digits": json_attack(b'{"top_k": ' + b"9" * 5000 + b"}", "INVALID_ARGUMENT.*digits"),
        "JSON NaN temperature": json_attack(b'{"temperature": NaN}', "INVALID_ARGUMENT.*NaN is not a JSON number"),
        "a stop string holding a lone surrogate": json_attack(b'{"stop": ["\\ud800"], "temperature": "hot"}',
                                                              "INVALID_ARGUMENT.*temperature must be a finite number"),
        "a stop list of 100,000 strings": json_attack(json.dumps({"stop": ["ab"] * 100_000}).encode(),
                                                      f"INVALID_ARGUMENT.*at most {MAX_STOP_STRINGS} stop strings"),
        "appending 4M ids to a 4096-token sequence": Hostile(
            "(local.set $s (call $seq_open (i32.const 0)))"
            f"(call $seq_append (local.get $s) (i32.const {BIG}) (i32.const 4000000))", GuestError,
            r"CAPACITY.*4000000 more asked", pages=pages_for(16_000_000)),
        "appending past max_tokens in one call": Hostile(
            "(local.set $s (call $seq_open (i32.const 0)))"
            f"(call $seq_append (local.get $s) (i32.const {BIG}) (i32.const 100))", QuotaExceeded,
            "fed more than its limit of 64 tokens", Limits(max_tokens=64), pages=2),
        "detokenizing 4M ids": Hostile(
            f"(call $detokenize (i32.const {BIG}) (i32.const 4000000) (i32.const 0) (i32.const 0))", QuotaExceeded,
            "more than its limit of 4194304 bytes of text", pages=pages_for(16_000_000)),
        "tokenizing more than one call may": Hostile(
            fill(ord("a"), MAX_TOKENIZE_BYTES + 1)
            + f"(call $tokenize (i32.const {BIG}) (i32.const {MAX_TOKENIZE_BYTES + 1}) (i32.const 0) (i32.const 0)"
              " (i32.const 0))", GuestError, "INVALID_ARGUMENT.*for one tokenize call",
            pages=pages_for(MAX_TOKENIZE_BYTES + 1)),
        "a bias of more pairs than tokens": Hostile(
            f"""{prefill(1)} (local.set $a (call $sampler_new (local.get $req) (local.get $len)))
            (call $sample (local.get $s) (local.get $a) (i32.const {BIG}) (i32.const 4000000) (i32.const 0))""",
            GuestError, "INVALID_ARGUMENT.*at most n_vocab", extra=data_i32([5], 64), pages=pages_for(32_000_000)),
        # What a request keeps on the host is budgeted: 16 sequences with their logits are over 64 KiB.
        "16 sequences holding logits": Hostile(
            f"""(loop $l {prefill(1)} (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_s (local.get $i) (i32.const 16)))) (i32.const 0)""", QuotaExceeded,
            "host state .* over its limit of 65536", Limits(max_host_bytes=64 << 10), extra=data_i32([5], 64)),
        # Long host work is cut off at the deadline, inside the call.
        "one long tokenize past the wall clock": Hostile(
            fill(ord("a"), MAX_TOKENIZE_BYTES)
            + f"(drop (call $tokenize (i32.const {BIG}) (i32.const {MAX_TOKENIZE_BYTES}) (i32.const 0) (i32.const 0)"
              " (i32.const 0))) (i32.const 0)", QuotaExceeded, "wall-clock limit of 0.02 s",
            Limits(wall_seconds=0.02), pages=pages_for(MAX_TOKENIZE_BYTES)),
        "special-token text tokenized with specials parsed": Hostile(
            f"""(local.set $i (i32.const {BIG}))
            (loop $l (i32.store (local.get $i) (i32.const 0x3e733c2f))  ;; "/<s>" then "<": "<s>" many times
              (i32.store8 (i32.add (local.get $i) (i32.const 4)) (i32.const 0x3c))
              (local.set $i (i32.add (local.get $i) (i32.const 5)))
              (br_if $l (i32.lt_u (local.get $i) (i32.const {BIG + MAX_TOKENIZE_BYTES}))))
            (drop (call $tokenize (i32.const {BIG}) (i32.const {MAX_TOKENIZE_BYTES}) (i32.const 2) (i32.const 0)
                                  (i32.const 0)))
            (i32.const 0)""", QuotaExceeded, "wall-clock limit of 0.02 s", Limits(wall_seconds=0.02),
            pages=pages_for(MAX_TOKENIZE_BYTES + 5)),
    }


HOSTILE_NAMES = ["infinite loop", "infinite loop past the wall clock", "host-call loop past the wall clock",
                 "unbounded memory.grow", "memory.grow forever", "bad pointers", "forged handles",
                 "closed handles", "trap halfway through generation", "10,000 sequences", "emit without end",
                 "token flood", "host-call flood", "tokenizer flood", "infinite recursion",
                 "infinite loop in the start function", "a table of 10M elements", "JSON nested 100,000 deep",
                 "JSON over its byte limit", "JSON number of 5000 digits", "JSON NaN temperature",
                 "a stop string holding a lone surrogate", "a stop list of 100,000 strings",
                 "appending 4M ids to a 4096-token sequence", "appending past max_tokens in one call",
                 "detokenizing 4M ids", "tokenizing more than one call may", "a bias of more pairs than tokens",
                 "16 sequences holding logits", "one long tokenize past the wall clock",
                 "special-token text tokenized with specials parsed"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_guest_ends_its_own_request_with_a_clear_error(model, name):
    hostile_cases(model)[name].run(model)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_tenant_running_beside_a_hostile_guest_gets_exactly_its_solo_output(model, good, alone, name):
    hostile = hostile_cases(model)[name]
    done = threading.Event()
    failures: list[BaseException] = []

    def attack() -> None:
        try:
            hostile.run(model)
        except BaseException as exc:  # noqa: BLE001  reported by the main thread
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=attack)
    thread.start()
    outputs = []
    while not done.is_set() or not outputs:  # keep the good tenant busy for the whole attack
        outputs.append(TenantSandbox(model, GOOD_LIMITS, tenant="good").run(good, GOOD_REQUEST).text)
    thread.join()
    assert not failures, failures
    assert set(outputs) == {alone}


def test_memory_grow_stops_at_the_limit(model):
    """The guest grows until refused and reports its size: never more than the limit."""
    body = """(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
      (call $hex (memory.size)) (i32.const 0)"""
    result = TenantSandbox(model, Limits(memory_bytes=2 << 20)).run(compile_wat(body), {})
    assert hex_words(result.text) == [32]  # 32 pages of 64 KiB = 2 MiB


def test_output_before_a_trap_reaches_the_client_and_the_error_carries_it(model):
    guest = compile_wat(generate_then_trap_body(6), extra=prompt_data(model))
    request = {"temperature": 0}
    with pytest.raises(GuestRunFailed, match="unreachable") as err:
        TenantSandbox(model).run(guest, request)
    assert isinstance(err.value, GuestError)  # the cause's class: a trap is the guest's error
    partial = err.value.result
    full = TenantSandbox(model).run(reference_guest(), {"prompt": PROMPT, "max_tokens": 10, "temperature": 0}).text
    assert partial.text and full.startswith(partial.text)
    assert partial.trace["seq_finish"].calls == 6


def test_opening_and_closing_many_sequences_is_fine(model):
    body = """(loop $l
        (drop (call $seq_close (call $seq_open (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_s (local.get $i) (i32.const 2000))))
      (i32.const 0)"""
    assert TenantSandbox(model).run(compile_wat(body), {}).trace["seq_open"].calls == 2000


def test_log_flood_is_capped_without_ending_the_request(model):
    body = f"""(loop $l (br_if $l (i32.eq (call $log (i32.const 1) (i32.const 0) (i32.const 1000)) (i32.const 0))))
      {expect("(call $log (i32.const 1) (i32.const 0) (i32.const 1000))", f"(i32.const {Status.LIMIT})", 1)}
      (i32.const 0)"""
    result = TenantSandbox(model).run(compile_wat(body), {})
    assert sum(len(text) for _, text in result.logs) <= Limits().max_log_bytes


def test_a_wild_allocator_pointer_ends_the_request(model):
    guest = compile_guest(b"""(module (memory (export "memory") 1)
      (func (export "realm_alloc") (param i32) (result i32) (i32.const 65530))
      (func (export "realm_main") (param i32 i32) (result i32) (i32.const 0)))""")
    with pytest.raises(GuestError, match="outside guest memory"):
        TenantSandbox(model).run(guest, {"prompt": PROMPT})


def test_another_tenants_live_handle_is_a_bad_handle(model):
    """Tenant A holds a live sequence; B, given its handle while A runs, can touch nothing of it."""
    victim_body = f"""
      (local.set $s (call $seq_open (i32.const 0)))
      (call $hex (local.get $s))
      {expect("(call $seq_len (local.get $s))", "(i32.const 0)", 1)}
      {expect("(call $seq_close (local.get $s))", "(i32.const 0)", 2)}
      (i32.const 0)"""
    outcome: dict[str, object] = {}

    def attacker(handle: int) -> None:
        body = "\n".join(expect(call, f"(i32.const {BAD_HANDLE})", k + 1) for k, call in enumerate([
            f"(call $seq_len (i32.const {handle}))",
            f"(call $forward_layer (i32.const {handle}) (i32.const 0))",
            f"(call $seq_append (i32.const {handle}) (i32.const 64) (i32.const 1))",
            f"(call $logits_read (i32.const {handle}) (i32.const 1024) (i32.const 4))",
            f"(call $seq_truncate (i32.const {handle}) (i32.const 0))",
            f"(call $seq_close (i32.const {handle}))"])) + "(i32.const 0)"
        outcome["attacker"] = TenantSandbox(model, tenant="b").run(compile_wat(body, extra=data_i32([1], 64)), {})

    def on_text(text: str) -> None:  # runs inside A's emit call, while A's sequence is live
        thread = threading.Thread(target=attacker, args=(int(text, 16),))
        thread.start()
        thread.join()

    victim = TenantSandbox(model, tenant="a").run(compile_wat(victim_body), {}, on_text=on_text)
    assert victim.status == Status.OK
    assert outcome["attacker"].status == Status.OK  # type: ignore[attr-defined]


@pytest.mark.parametrize("imports, message", [
    ('(import "realm" "seq_open" (func (param i32 i32) (result i32)))', "signature"),
    ('(import "realm" "forward_layer" (func (param i64 i32) (result i32)))', "signature"),
    ('(import "realm" "emit" (func (param i32 i32)))', "signature"),
    ('(import "realm" "emit" (func (param i32 i32) (result i32 i32)))', "signature"),
    ('(import "realm" "open_file" (func (param i32) (result i32)))', "no such host function"),
    ('(import "realm" "seq_open" (global i32))', "signature"),
    ('(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))', "only from module 'realm'"),
    ('(import "env" "memory" (memory 1))', "only from module 'realm'"),
])
def test_imports_with_wrong_signatures_are_rejected_at_deploy_and_the_old_module_keeps_serving(
        model, good, imports, message):
    registry = TenantRegistry()
    registry.create("victim")
    registry.deploy("victim", reference_guest_path().read_bytes())
    module = f"""(module {imports} (memory (export "memory") 1)
      (func (export "realm_alloc") (param i32) (result i32) (i32.const 0))
      (func (export "realm_main") (param i32 i32) (result i32) (i32.const 0)))"""
    with pytest.raises(GuestError, match=message):
        registry.deploy("victim", module.encode())
    assert registry.get("victim").module_sha256 == good.sha256
    assert TenantSandbox(model).run(registry.guest("victim"), GOOD_REQUEST).status == Status.OK
