"""`realm run` as a new user feeds it: prompts from every source, bad bytes, huge values, a closed
pipe, Ctrl-C, a terminal on stdin, and prompts longer than the context. Every bad input is one line
on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import one_error_line
from conftest import REALM
from gguf import GGUFReader
from oracle import DATA

TINY = str(DATA / "tiny-llama-Q8_0.gguf")
TINY_RUN = ("-m", TINY, "-b", "numpy", "--temperature", "0")
TOKENIZE = json.loads((DATA / "gemma3-270m.tokenize.json").read_text())
# Emits "partial", then calls the host forever: Ctrl-C arrives while the host is in Python.
EMIT_THEN_SPIN = """(module
  (import "realm" "emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "model_info" (func $info (param i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 8) "partial\\n")
  (func (export "realm_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "realm_main") (param i32 i32) (result i32)
    (drop (call $emit (i32.const 8) (i32.const 8)))
    (loop $l (drop (call $info (i32.const 64) (i32.const 40))) (br $l)) (i32.const 0)))"""

# Emits "partial", then loops in pure wasm: no host call ever sees the cancel.
EMIT_THEN_LOOP = EMIT_THEN_SPIN.replace("(loop $l (drop (call $info (i32.const 64) (i32.const 40))) (br $l))",
                                        "(loop $l (br $l))")


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tiny-llama-Q8_0 with a context of 8192 tokens (the file says 512): a model whose context is
    larger than Realm's default 4096, like Gemma 3's 32768, but quick to run."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama-ctx8192.gguf"
    shutil.copy(TINY, path)
    reader = GGUFReader(path, "r+")
    field = reader.fields["llama.context_length"]
    field.parts[field.data[0]][0] = 8192
    del reader  # flushes the memory map
    return str(path)


def test_the_prompt_comes_from_an_argument_a_file_or_stdin_alike(realm, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Once upon a time")
    runs = [realm("run", "Once upon a time", *TINY_RUN, "--max-tokens", "4", "--json"),
            realm("run", "--file", str(prompt_file), *TINY_RUN, "--max-tokens", "4", "--json"),
            realm("run", "-", *TINY_RUN, "--max-tokens", "4", "--json", input="Once upon a time"),
            realm("run", "--file", "-", *TINY_RUN, "--max-tokens", "4", "--json", input="Once upon a time"),
            realm("run", *TINY_RUN, "--max-tokens", "4", "--json", input="Once upon a time")]
    results = []
    for done in runs:
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    assert all(r["text"] == results[0]["text"] and r["prompt_tokens"] == results[0]["prompt_tokens"]
               for r in results)


def test_json_has_the_finish_reason_token_counts_and_timings(realm):
    done = realm("run", "Once upon a time", *TINY_RUN, "--max-tokens", "5", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["finish_reason"] == "length" and result["completion_tokens"] == 5
    assert result["prompt_tokens"] == result["tokens_fed"] - 4  # the 5th token is sampled, never fed
    assert set(result["timings"]) == {"load_s", "run_s", "first_text_s"}
    assert 0 < result["timings"]["first_text_s"] <= result["timings"]["run_s"] + result["timings"]["load_s"]
    assert done.stderr == ""  # --json: the one object says it all


def test_a_finish_notice_goes_to_stderr_and_only_text_to_stdout(realm):
    done = realm("run", "Once upon a time", *TINY_RUN, "--max-tokens", "5")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("finish_reason: length (--max-tokens reached); ")
    assert "5 completion tokens" in done.stderr
    assert "finish_reason" not in done.stdout
    quiet = realm("run", "Once upon a time", *TINY_RUN, "--max-tokens", "5", "--quiet")
    assert quiet.stderr == "" and quiet.stdout == done.stdout


@pytest.mark.parametrize("where", ["argument", "stdin", "file"])
def test_a_prompt_that_is_not_utf8_is_one_error_line(realm, tmp_path, where):
    raw = b"caf\xe9 \xff"  # Latin-1, not UTF-8
    if where == "argument":
        done = realm("run", os.fsdecode(raw), *TINY_RUN)
    elif where == "stdin":
        done = realm("run", *TINY_RUN, input=raw)
    else:
        (tmp_path / "latin1.txt").write_bytes(raw)
        done = realm("run", "--file", str(tmp_path / "latin1.txt"), *TINY_RUN)
    one_error_line(done, 2, "is not valid UTF-8 text (byte 0xe9 at offset 3)")
    assert done.stdout == ""


@pytest.mark.parametrize("args,status,fragments", [  # 2: a usage error (click's), 1: a value Realm refuses
    (["--max-tokens", str(10**30)], 2, ["--max-tokens", "out of range"]),
    (["--seed", str(-10**20)], 1, ["seed must be null or an integer in [0, 2**64)"]),
    (["--seed", str(2**64)], 1, ["seed must be null or an integer in [0, 2**64)"]),
    (["--max-tokens", "0"], 1, ["max_tokens must be >= 1"]),
    (["--max-tokens", "lots"], 2, ["'lots' is not a valid integer"]),
    (["--temperature", "nan"], 1, ["temperature must be a finite number"]),
    (["--top-p", "inf"], 1, ["top_p must be a finite number"]),
    (["--ctx-size", "-1"], 2, ["--ctx-size"]),
    (["--ctx-size", str(10**12)], 2, ["--ctx-size", "over the model's context of 512 tokens"]),
    (["--file", "/no/such/prompt.txt"], 2, ["cannot read /no/such/prompt.txt"]),
    (["--param", "novalue"], 2, ["expected KEY=VALUE"]),
])
def test_bad_values_are_one_error_line(realm, args, status, fragments):
    prompt = [] if "--file" in args else ["x"]
    one_error_line(realm("run", *prompt, *TINY_RUN, *args), status, *fragments)


def test_a_prompt_and_a_file_together_are_refused(realm, tmp_path):
    (tmp_path / "p.txt").write_text("x")
    one_error_line(realm("run", "x", "--file", str(tmp_path / "p.txt"), *TINY_RUN), 2, "not both")


def test_a_prompt_is_never_awaited_silently_from_a_terminal(realm_env):
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([REALM, "run", *TINY_RUN], stdin=terminal, capture_output=True, text=True,
                              env=realm_env, timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "Error: no prompt: give PROMPT, --file PATH, or - to read it from stdin (see 'realm run --help')"]


def test_dash_on_a_terminal_says_it_is_reading_then_reads_to_ctrl_d(realm_env):
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([REALM, "run", "-", *TINY_RUN, "--max-tokens", "3", "--json"], stdin=terminal,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=realm_env)
        os.write(controller, b"Once upon a time\n\x04")  # a line, then Ctrl-D: end of input
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 0, err
    assert err.decode() == "reading the prompt from the terminal; end it with Ctrl-D\n"
    assert json.loads(out)["completion_tokens"] == 3


def test_a_prompt_longer_than_the_context_says_so_with_the_sizes(realm, tmp_path):
    (tmp_path / "long.txt").write_text("the cat sat on the mat. " * 40)
    done = realm("run", "--file", str(tmp_path / "long.txt"), *TINY_RUN, "--ctx-size", "100")
    line = one_error_line(done, 1, "prompt is longer than the context", "the context 100",
                          "--ctx-size raises it, up to the model's 512")
    assert "status -5" not in line and "CAPACITY" in line


def test_ctx_size_runs_a_prompt_over_4096_tokens_on_a_model_with_a_larger_context(realm, tmp_path,
                                                                                  long_context_model):
    (tmp_path / "long.txt").write_text("the cat sat on the mat. " * 235)  # about 4230 tokens
    run = ("run", "--file", str(tmp_path / "long.txt"), "-m", long_context_model, "-b", "numpy",
           "--temperature", "0", "--max-tokens", "3", "--json")
    refused = realm(*run)
    one_error_line(refused, 1, "the context 4096", "--ctx-size raises it, up to the model's 8192")
    done = realm(*run, "--ctx-size", "0")  # 0: the model's whole context
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert 4096 < result["prompt_tokens"] <= 8192 - 3 and result["finish_reason"] == "length"


def test_generation_that_fills_the_context_ends_with_finish_reason_context(realm):
    done = realm("run", "Once upon a time", *TINY_RUN, "--ctx-size", "24", "--max-tokens", "100", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["finish_reason"] == "context"
    assert result["prompt_tokens"] + result["completion_tokens"] == 24 + 1  # the last one is sampled, not fed


def test_ctx_size_cannot_exceed_a_tenants_limit(realm):
    assert realm("tenant", "create", "small", "--limit", "max_context=64").returncode == 0
    guest = Path(__file__).parent.parent / "guest" / "generate.wasm"
    assert realm("tenant", "deploy", "small", str(guest)).returncode == 0
    done = realm("run", "x", *TINY_RUN, "--tenant", "small", "--ctx-size", "128")
    one_error_line(done, 2, "over tenant small's max_context limit of 64",
                   "realm tenant set-limits small max_context=N")


@pytest.mark.parametrize("special", [False, True])
def test_special_parses_special_tokens_in_the_prompt_as_llamacpp_does(realm, special):
    key = "add_bos_special" if special else "add_bos_no_special"
    case = next(c for c in TOKENIZE[key] if "<start_of_turn>" in c["text"])
    done = realm("run", case["text"], "-b", "numpy", "--max-tokens", "1", "--json", *(["--special"] if special else []))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prompt_tokens"] == len(case["ids"])


@pytest.mark.parametrize("args", [["run", "Once upon a time", *TINY_RUN, "--max-tokens", "50"],
                                  ["tokenize", "-m", TINY, "a long text " * 50],
                                  ["tenant", "list"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(realm_env, args):
    proc = subprocess.Popen([REALM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=realm_env)
    proc.stdout.close()  # as `| head` does once it has what it wants: every write now meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == ""


def test_ctrl_c_exits_130_without_a_traceback_keeping_what_was_printed(realm_env, tmp_path):
    guest = tmp_path / "spin.wat"
    guest.write_text(EMIT_THEN_SPIN)
    proc = subprocess.Popen([REALM, "run", "x", "-m", TINY, "-b", "numpy", "--guest", str(guest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=realm_env)
    first = proc.stdout.readline()  # the guest is running: it has emitted
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert first + rest == b"partial\n"
    assert stderr.decode().strip() == "Interrupted"


def test_ctrl_c_ends_a_guest_that_never_calls_the_host_again(realm, realm_env, tmp_path):
    guest = tmp_path / "loop.wat"
    guest.write_text(EMIT_THEN_LOOP)
    realm("tenant", "create", "busy", "--limit", "fuel=1e15", "--limit", "wall_seconds=600")
    assert realm("tenant", "deploy", "busy", str(guest)).returncode == 0
    proc = subprocess.Popen([REALM, "run", "x", "-m", TINY, "-b", "numpy", "--tenant", "busy"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=realm_env)
    first = proc.stdout.readline()
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - started < 30  # not the 600 s wall-clock limit
    assert first + rest == b"partial\n" and stderr.decode().strip() == "Interrupted"
