"""`realm batch` as a user runs it: 8 tenants x 2 requests at once (different guests, prompts,
lengths, sampling settings, stop strings) on one scheduler; every output equals the same request
run alone; a trapping guest, a guest over its limits and one cut off by its deadline fail alone,
and the KV blocks of every request come back."""

from __future__ import annotations

import json
from pathlib import Path

from guest_helpers import data_i32, prefill, wat_guest
from oracle import DATA

TINY = str(DATA / "tiny-llama-F32.gguf")
GUESTS = Path(__file__).resolve().parent.parent / "guest"
TRAP = """(module (import "realm" "emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 8) "partial")
  (func (export "realm_alloc") (param i32) (result i32) (i32.const 64))
  (func (export "realm_main") (param i32 i32) (result i32)
    (drop (call $emit (i32.const 8) (i32.const 7))) unreachable))"""

# tenant -> (guest, limits); a1..a5 run the reference guest, c1 the constrained-choice guest.
TENANTS = {"a1": ("generate.wasm", []), "a2": ("generate.wasm", []), "a3": ("generate.wasm", []),
           "a4": ("generate.wasm", []), "a5": ("generate.wasm", []), "c1": ("choice.wasm", []),
           "trap": ("trap.wat", []), "small": ("generate.wasm", ["max_tokens=6"])}
REQUESTS = [
    {"tenant": "a1", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0},
    {"tenant": "a1", "prompt": "The", "max_tokens": 40, "temperature": 0.8, "seed": 11},
    {"tenant": "a2", "prompt": "A long prompt " * 30, "max_tokens": 12, "temperature": 0},
    {"tenant": "a2", "prompt": "hello world", "max_tokens": 30, "temperature": 1.1, "top_k": 20, "seed": 5},
    {"tenant": "a3", "prompt": "x y z", "max_tokens": 50, "temperature": 0, "stop": ["e"]},
    {"tenant": "a3", "prompt": "Numbers: 1 2 3", "max_tokens": 20, "temperature": 0.7, "top_p": 0.9, "seed": 2},
    {"tenant": "a4", "prompt": "q", "max_tokens": 3, "temperature": 0},
    {"tenant": "a4", "prompt": "Once", "max_tokens": 64, "temperature": 0.9, "min_p": 0.1, "seed": 9,
     "repeat_penalty": 1.3},
    {"tenant": "a5", "prompt": "abc " * 60, "max_tokens": 16, "temperature": 0},
    {"tenant": "a5", "prompt": "stop here", "max_tokens": 40, "temperature": 0.6, "seed": 4, "stop": ["a", "o"]},
    {"tenant": "c1", "prompt": "Is it?", "choices": ["yes", "no", "maybe"], "temperature": 1.5, "seed": 3},
    {"tenant": "c1", "prompt": "Pick one", "choices": ["red", "green"], "temperature": 0},
    {"tenant": "trap", "prompt": "anything"},
    {"tenant": "trap", "prompt": "again"},
    {"tenant": "small", "prompt": "this prompt alone is over six tokens long", "max_tokens": 4},
    {"tenant": "small", "prompt": "hi", "max_tokens": 30, "temperature": 0},  # 1 + 30 tokens > 6
]


def _deploy(realm, tmp_path: Path) -> None:
    (tmp_path / "trap.wat").write_text(TRAP)
    for name, (guest, limits) in TENANTS.items():
        created = realm("tenant", "create", name, *(a for limit in limits for a in ("--limit", limit)))
        assert created.returncode == 0, created.stderr
        path = tmp_path / guest if guest.endswith(".wat") else GUESTS / guest
        assert realm("tenant", "deploy", name, str(path)).returncode == 0


def _batch(realm, tmp_path: Path, requests: list[dict], *args: str) -> tuple[list[dict], dict, int]:
    source = tmp_path / "requests.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in requests))
    out = tmp_path / "results.jsonl"
    done = realm("batch", str(source), "-m", TINY, "-b", "numpy", "--out", str(out), "--stats", *args)
    assert "Traceback" not in done.stderr, done.stderr
    stats = json.loads(next(line for line in done.stderr.splitlines() if line.startswith("{")))
    return [json.loads(line) for line in out.read_text().splitlines()], stats, done.returncode


def test_sixteen_requests_at_once_equal_their_solo_runs_and_failures_stay_alone(realm, tmp_path):
    _deploy(realm, tmp_path)
    together, stats, code = _batch(realm, tmp_path, REQUESTS, "--concurrency", "16")
    alone, _, _ = _batch(realm, tmp_path, REQUESTS, "--concurrency", "1")
    assert code == 1  # some requests failed
    assert [r["line"] for r in together] == list(range(1, len(REQUESTS) + 1))  # input order
    assert stats["max_batch"] > 1 and stats["kv_blocks_used"] == 0
    for request, got, solo in zip(REQUESTS, together, alone, strict=True):
        if request["tenant"] == "trap":
            assert got["error"] == "guest trapped: wasm `unreachable` instruction executed"
        elif request["tenant"] == "small":
            assert "limit of 6 tokens" in got["error"]
        else:
            assert "error" not in got, got
            assert got == {**solo, "ttft_ms": got["ttft_ms"], "total_ms": got["total_ms"]}, request
            assert got["total_ms"] >= (got["ttft_ms"] or 0)
    generated = [r for r in together if r.get("finish_reason")]
    assert {r["finish_reason"] for r in generated} >= {"length", "stop"}


def test_batch_outputs_equal_realm_run_alone(realm, tmp_path):
    _deploy(realm, tmp_path)
    picked = [REQUESTS[1], REQUESTS[4], REQUESTS[10]]  # sampled, stop string, choice guest
    together, _, code = _batch(realm, tmp_path, REQUESTS[:12], "--concurrency", "12")
    assert code == 0
    for request in picked:
        fields = [a for key, value in request.items() if key not in ("tenant", "prompt", "choices", "stop")
                  for a in (f"--{key.replace('_', '-')}", str(value))]
        fields += [a for stop in request.get("stop", []) for a in ("--stop", stop)]
        if "choices" in request:
            fields += ["--param", f"choices={json.dumps(request['choices'])}"]
        done = realm("run", request["prompt"], "-m", TINY, "-b", "numpy", "--tenant", request["tenant"], "--json",
                     *fields)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["text"] == together[REQUESTS.index(request)]["text"], request


HELD = 64  # tokens the holding guest keeps in its cache: more than the other request's 10 + 20 ever hold


def _holding_guest() -> str:
    """WAT of a guest that never ends by itself: it prefills HELD tokens, then decodes one token after
    them again and again (rewinding each time), so only its deadline ends it, while it holds the
    prefill's KV blocks, however fast or loaded the machine is."""
    body = f"""{prefill(HELD)}
      (loop $again
        (drop (call $seq_truncate (local.get $s) (i32.const {HELD})))
        (drop (call $seq_append (local.get $s) (i32.const 64) (i32.const 1)))
        (drop (call $forward_layer (local.get $s) (i32.const 0)))
        (drop (call $forward_layer (local.get $s) (i32.const 1)))
        (drop (call $seq_finish (local.get $s)))
        (br $again))
      (i32.const 0)"""
    return wat_guest(body, extra=data_i32(list(range(1, HELD + 1)), 64))


def test_a_request_cut_off_by_its_deadline_gives_its_kv_blocks_back(realm, tmp_path):
    (tmp_path / "hold.wat").write_text(_holding_guest())
    # 2 s: long enough for its prefill on a loaded machine; the token and host-call limits out of the way
    limits = ["wall_seconds=2", "max_tokens=100000000", "max_host_calls=1000000000"]
    assert realm("tenant", "create", "hurry", *(a for limit in limits for a in ("--limit", limit))).returncode == 0
    assert realm("tenant", "deploy", "hurry", str(tmp_path / "hold.wat")).returncode == 0
    requests = [{"tenant": "hurry", "prompt": "anything"}, {"prompt": "meanwhile", "max_tokens": 20, "temperature": 0}]
    results, stats, code = _batch(realm, tmp_path, requests)
    assert code == 1
    assert results[0]["error"] == "request exceeded its wall-clock limit of 2 s", results[0]
    assert "error" not in results[1] and results[1]["completion_tokens"] == 20
    assert stats["kv_tokens_peak"] >= HELD, stats  # it was cut off holding its prefill's blocks ...
    assert stats["kv_blocks_used"] == 0  # ... and they came back


def test_bad_lines_are_reported_by_number_and_do_not_stop_the_others(realm, tmp_path):
    source = tmp_path / "requests.jsonl"
    source.write_text('{"prompt": "ok", "max_tokens": 3, "temperature": 0}\nnot json\n[1]\n{"max_tokens": 2}\n'
                      '{"prompt": "x", "top_p": 7}\n\n{"prompt": "x", "tenant": "ghost"}\n')
    done = realm("batch", str(source), "-m", TINY, "-b", "numpy")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 7]
    assert rows[0]["completion_tokens"] == 3 and rows[0]["finish_reason"] == "length"
    assert rows[1]["error"].startswith("line 2: not JSON")
    assert rows[2]["error"] == "line 3: a request must be a JSON object"
    assert rows[3]["error"] == 'line 4: a request needs a string "prompt"'
    assert "top_p must be in [0, 1]" in rows[4]["error"]
    assert rows[5]["error"] == "line 7: no tenant named 'ghost'"
    assert done.stderr.strip().splitlines()[-1] == "5 of 6 requests failed"


def test_kv_memory_budget_is_one_clear_error_when_too_small(realm):
    for size, message in (("1K", "holds no block"), ("lots", "expected a size such as 512M or 2G")):
        done = realm("run", "hello", "-m", TINY, "-b", "numpy", "--kv-memory", size)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert message in done.stderr.strip().splitlines()[-1], done.stderr
    full = realm("run", "a b c d e f g h i j k l m n o p q r s t", "-m", TINY, "-b", "numpy", "--kv-memory", "40K",
                 "--max-tokens", "200", "--temperature", "0")
    assert full.returncode == 1 and "Traceback" not in full.stderr
    assert "KV cache memory too small" in full.stderr and "--kv-memory" in full.stderr, full.stderr


def test_a_line_holding_raw_line_separators_stays_one_request_and_a_bad_byte_fails_only_its_line(realm, tmp_path):
    from test_serve import marker_guest

    for name in ("left", "right"):
        (tmp_path / f"{name}.wat").write_text(marker_guest(f"guest of {name}"))
        assert realm("tenant", "create", name).returncode == 0
        assert realm("tenant", "deploy", name, str(tmp_path / f"{name}.wat")).returncode == 0
    # U+2028, U+2029, U+0085 and U+001C are line breaks to str.splitlines, raw text to JSON.
    prompts = ["one\u2028two", "three\u2029four", "five\u0085six", "seven\x1ceight"]
    lines = [json.dumps({"tenant": "left" if i % 2 == 0 else "right", "prompt": p}, ensure_ascii=False).encode()
             for i, p in enumerate(prompts)]
    lines.insert(2, b'{"tenant": "left", "prompt": "bad \xff byte"}')
    source = tmp_path / "requests.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "results.jsonl"
    done = realm("batch", str(source), "-m", TINY, "-b", "numpy", "--out", str(out))
    assert done.returncode == 1 and "1 of 5 requests failed" in done.stderr and "Traceback" not in done.stderr
    results = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5]
    assert "not UTF-8" in results[2]["error"] and results[2]["error"].startswith("line 3:")
    served = [r for r in results if "error" not in r]
    assert [(r["tenant"], r["text"]) for r in served] == [
        ("left", "guest of left"), ("right", "guest of right"), ("left", "guest of left"), ("right", "guest of right")]
