"""`realm run` as a user runs it: through the reference guest, a deployed tenant's guest or an ad-hoc one."""

from __future__ import annotations

import json
import re
from pathlib import Path

from oracle import DATA

TINY = str(DATA / "tiny-llama-F32.gguf")  # tiny-model runs also pass -b numpy: no GPU probe needed
GUESTS = Path(__file__).resolve().parent.parent / "guest"
PARIS = "Question: What is the capital of France?\nAnswer:"


def test_the_paris_question_is_answered_through_the_reference_guest_one_host_call_per_step(realm):
    done = realm("run", PARIS, "--temperature", "0", "--max-tokens", "8", "--trace")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(" Paris")
    assert "Traceback" not in done.stderr
    assert "seq_step" not in done.stdout, "stdout is the text alone; the trace is on stderr"
    row = re.search(r"seq_step\s*│\s*(\d+)", done.stderr)
    assert row and int(row[1]) == 8, done.stderr
    assert not re.search(r"forward_layer\s*│", done.stderr)  # the reference guest runs whole steps (ABI 5)
    assert "8 steps x 18 layers -> 8 whole-step seq_step(_all) calls and 0 forward_layer calls" in done.stderr


def test_prompt_from_stdin_and_json_output(realm):
    done = realm("run", "-m", TINY, "-b", "numpy", "--temperature", "0", "--max-tokens", "6", "--json",
                 input="Once upon a time")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == 0 and result["guest"] == "generate.wasm" and result["text"]
    assert result["trace"]["seq_step"]["calls"] == 6
    assert "forward_layer" not in result["trace"] or result["trace"]["forward_layer"]["calls"] == 0


def test_an_ad_hoc_guest_runs_with_its_request_fields(realm):
    done = realm("run", "Is it?", "-m", TINY, "-b", "numpy", "--guest", str(GUESTS / "choice.wasm"),
                 "--temperature", "1.5", "--seed", "3", "--param", 'choices=["yes", "no"]')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"yes", "no"}


def test_a_wat_guest_file_runs_and_its_trap_is_one_clear_error_line(realm, tmp_path):
    wat = tmp_path / "trap.wat"
    wat.write_text("""(module (import "realm" "emit" (func $emit (param i32 i32) (result i32)))
      (memory (export "memory") 1) (data (i32.const 8) "partial")
      (func (export "realm_alloc") (param i32) (result i32) (i32.const 64))
      (func (export "realm_main") (param i32 i32) (result i32)
        (drop (call $emit (i32.const 8) (i32.const 7))) unreachable))""")
    done = realm("run", "x", "-m", TINY, "-b", "numpy", "--guest", str(wat), "--trace")
    assert done.returncode == 1
    assert done.stdout == "partial\n" and "emit" in done.stderr  # the output so far; the trace on stderr
    assert done.stderr.strip().splitlines()[-1] == "Error: guest trapped: wasm `unreachable` instruction executed"
    assert "Traceback" not in done.stderr


def test_bad_usage_is_reported_without_a_traceback(realm, tmp_path):
    not_wasm = tmp_path / "x.wasm"
    not_wasm.write_bytes(b"hello")
    tiny = ["x", "-m", TINY, "-b", "numpy"]
    for args, message in ((["--guest", str(not_wasm)], "not a WebAssembly module"),
                          (["--tenant", "nobody"], "no tenant named 'nobody'"),
                          (["--top-p", "7"], "top_p must be in [0, 1]")):
        done = realm("run", *tiny, *args)
        assert done.returncode == 1, args
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and message in last and "Traceback" not in done.stderr, done.stderr
