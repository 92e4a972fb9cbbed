"""`realm run [PROMPT]`: generate text through a guest (the reference guest unless told otherwise).

Text streams to stdout as the guest emits it; when generation ends, one notice on stderr says why
(`finish_reason`: stop, length or context) with the token counts and time. `--json` prints one
object instead, with the same fields and timings. `--trace` (the host calls the guest made) goes
to stderr, so stdout is only ever the generated text or the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from host_functions.abi import Limits, Status
from host_functions.engine.model import Model
from host_functions.errors import GuestError, RequestCancelled
from realm.cli import EXIT_INTERRUPTED, main
from realm.cli.console import stderr_console, write_stdout
from realm.cli.constraint_flags import constraint_options
from realm.cli.options import (
    check_lora_given,
    flag_errors,
    kv_memory_option,
    load_with_progress,
    lora_option_group,
    model_options,
    prefix_cache_option,
)
from realm.cli.prompt import read_prompt
from realm.request.sources import from_flags
from realm.request.spec import FirstText
from realm.sandbox.intake import reference_guest_path
from realm.sandbox.report import GuestRunFailed, RunResult, speculation_figures

# (flag, request key, type, help): every sampling parameter the request can carry.
SAMPLING_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--temperature", "temperature", float, "Sampling temperature; 0 is greedy. [host default 0.8]"),
    ("--top-k", "top_k", int, "Keep the k most likely tokens; 0 is off. [40]"),
    ("--top-p", "top_p", float, "Nucleus sampling threshold; 1 is off. [0.95]"),
    ("--min-p", "min_p", float, "Drop tokens below min_p x the top probability; 0 is off. [0.05]"),
    ("--repeat-penalty", "repeat_penalty", float, "Penalty for repeated tokens; 1 is off. [1.0]"),
    ("--presence-penalty", "presence_penalty", float, "Subtracted from seen tokens' logits. [0]"),
    ("--frequency-penalty", "frequency_penalty", float, "Subtracted per occurrence. [0]"),
    ("--repeat-last-n", "repeat_last_n", int, "Tokens the penalties look back over; -1 all. [64]"),
    ("--seed", "seed", int, "Random seed for reproducible sampling."),
    ("--max-tokens", "max_tokens", int, "Most tokens to generate. [128]"),
)

CANCEL_GRACE_S = 2.0  # after Ctrl-C, how long a guest has to reach a host call before the process ends

# finish_reason -> what it means for the user, and the flag that moves it.
FINISH_REASONS = {
    "stop": "an end-of-text token or a stop string",
    "length": "--max-tokens reached",
    "context": "the context is full (--ctx-size)",
}


def sampling_options(func: Any) -> Any:
    """Add every sampling flag (default: absent, so the guest and host defaults apply) and --stop."""
    for flag, key, kind, help_text in reversed(SAMPLING_FLAGS):
        func = click.option(flag, key, type=kind, default=None, help=help_text)(func)
    return click.option("--stop", "stop", multiple=True, help="Stop before this text (repeatable).")(func)


@main.command()
@click.argument("prompt", required=False)
@click.option("--file", "-f", "prompt_file", metavar="PATH", help="Read the prompt from PATH (- for stdin).")
@model_options
@kv_memory_option
@sampling_options
@click.option("--ctx-size", "-c", type=click.IntRange(0), default=None,
              help="Context in tokens (prompt + completion), what the guest's sequences are set up for (as "
                   "llama.cpp's n_ctx, it picks LongRoPE's rope factors); 0 is the model's whole context. "
                   "[4096, or the tenant's max_context]")
@click.option("--special", is_flag=True, help="Parse special tokens such as <start_of_turn> in the prompt.")
@click.option("--tenant", "tenant_name", metavar="NAME", help="Run tenant NAME's deployed guest, with its limits.")
@click.option("--guest", "guest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run this guest module (.wasm or .wat) instead of the reference guest.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help='Extra request field for the guest, VALUE as JSON if it parses (e.g. choices=\'["a","b"]\').')
@constraint_options
@click.option("--speculative", metavar="ngram|draft:FILE|self:N", default=None,
              help="Speculative decoding: prompt lookup, a draft model FILE (same vocabulary), or the model's first "
                   "N layers. The output is the same; only the speed changes.")
@lora_option_group
@click.option("--trace", is_flag=True, help="After the run, show on stderr every host function the guest called.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
@click.option("--quiet", "-q", is_flag=True, help="No finish notice on stderr.")
@prefix_cache_option
def run(prompt: str | None, prompt_file: str | None, model_path: str | None, backend: str,
        kv_memory: int | None, no_prefix_cache: bool, stop: tuple[str, ...],
        ctx_size: int | None, special: bool, tenant_name: str | None, guest_file: Path | None,
        params: tuple[str, ...], speculative: str | None, lora_file: str | None, lora_scale: float,
        lora_merged: bool, constraint: dict[str, str] | None,
        trace: bool, as_json: bool, quiet: bool, **sampling: Any) -> None:
    """Generate a continuation of PROMPT through a WebAssembly guest, streaming its text.

    The prompt is PROMPT, the file given with --file, or stdin (PROMPT `-`, or a pipe); it must be
    UTF-8 text.
    """
    if tenant_name and guest_file:
        raise click.UsageError("--tenant and --guest are alternatives: give one")
    check_lora_given(lora_file is not None)
    text = read_prompt(prompt, prompt_file)
    with flag_errors():
        fields = request_fields(text, sampling, stop, params, special)
        if constraint:
            fields["constraint"] = constraint
        request = from_flags(fields, tenant_name, guest_file,
                             speculative, lora_file, lora_scale, lora_merged)
    label = f"tenant {tenant_name}" if tenant_name else (guest_file or reference_guest_path()).name
    started = time.perf_counter()
    model = load_with_progress(model_path, backend, kv_memory, prefix_cache=not no_prefix_cache)
    loaded = time.perf_counter()
    request = dataclasses.replace(request, limits=_with_context(request.limits, ctx_size, model, tenant_name))
    clock = FirstText(None if as_json else write_stdout)
    interrupted = threading.Event()
    run_started = time.perf_counter()
    try:
        with _ctrl_c_cancels(interrupted):
            result = request.run(model, on_text=clock, cancel=interrupted)
    except RequestCancelled:
        raise KeyboardInterrupt from None  # the CLI's Ctrl-C exit: status 130, what was printed stays
    except GuestRunFailed as exc:
        if not as_json:
            _finish_stream(exc.result)
            if trace:
                _print_trace(exc.result, label, model.config.n_layers)
        if exc.result.status == Status.CAPACITY:
            raise GuestError(f"{exc}; {_capacity_hint(model, request.limits, text, special)}") from None
        raise
    timings = {"load_s": loaded - started, "run_s": result.seconds,
               "first_text_s": None if clock.first is None else clock.first - loaded}
    decode_s = None if clock.first is None else run_started + result.seconds - clock.first
    if as_json:
        click.echo(json.dumps(_result_json(result, label, timings, decode_s)))
        return
    _finish_stream(result)
    if trace:
        _print_trace(result, label, model.config.n_layers, decode_s)
    if not quiet:
        click.echo(finish_notice(result), err=True)


def request_fields(prompt: str, sampling: dict[str, Any], stop: tuple[str, ...], params: tuple[str, ...],
                   special: bool = False) -> dict[str, Any]:
    """The fields of the guest's request from the flags: the prompt, the sampling flags given, stop
    strings, --param's extra fields (VALUE as JSON if it parses), and --special."""
    fields: dict[str, Any] = {"prompt": prompt}
    fields.update({key: value for key, value in sampling.items() if value is not None})
    if stop:
        fields["stop"] = list(stop)
    for item in params:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        try:
            fields[key] = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            fields[key] = text
    if special:
        fields["special"] = True
    return fields


def _with_context(limits: Limits, ctx_size: int | None, model: Model, tenant_name: str | None) -> Limits:
    """The limits with --ctx-size applied: up to the model's context, and for a tenant up to its limit."""
    if ctx_size is None:
        return limits
    model_ctx = model.config.context_length
    n_ctx = model_ctx if ctx_size == 0 else ctx_size
    if n_ctx > model_ctx:
        raise click.BadParameter(f"{n_ctx} is over the model's context of {model_ctx} tokens", param_hint="--ctx-size")
    if tenant_name:
        if n_ctx > limits.max_context:
            raise click.BadParameter(f"{n_ctx} is over tenant {tenant_name}'s max_context limit of "
                                     f"{limits.max_context} (realm tenant set-limits {tenant_name} max_context=N)",
                                     param_hint="--ctx-size")
        return dataclasses.replace(limits, max_context=n_ctx)
    # An ad-hoc run is the operator's own: the token budget grows with the context asked for.
    return dataclasses.replace(limits, max_context=n_ctx, max_tokens=max(limits.max_tokens, n_ctx))


def _capacity_hint(model: Model, limits: Limits, prompt: str, special: bool) -> str:
    n_prompt = len(model.tokenizer.encode(prompt, parse_special=special))
    n_ctx = min(model.config.context_length, limits.max_context)
    hint = f"the prompt is {n_prompt} tokens, the context {n_ctx}"
    if n_ctx < model.config.context_length:
        hint += f" (--ctx-size raises it, up to the model's {model.config.context_length})"
    return hint


@contextmanager
def _ctrl_c_cancels(interrupted: threading.Event) -> Iterator[None]:
    """While the guest runs, Ctrl-C cancels its request at its next host call.

    The default handler would raise KeyboardInterrupt wherever the main thread is, which may be
    inside wasmtime's callback glue, where the exception is lost and the guest runs on. A guest
    computing without host calls never looks at the cancel, and Python runs no signal handler
    while wasm runs; so a watcher thread, woken through the signal wakeup fd, sets the cancel and
    ends the process itself if the guest has not stopped CANCEL_GRACE_S later.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    finished = threading.Event()

    def watch() -> None:
        while os.read(read_fd, 1) != bytes([signal.SIGINT]):
            if finished.is_set():
                return
        interrupted.set()
        if not finished.wait(CANCEL_GRACE_S):
            sys.stdout.flush()
            sys.stderr.write("\nInterrupted\n")
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)  # what was printed is flushed; nothing else is open for writing

    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    previous_fd = signal.set_wakeup_fd(write_fd)
    watcher = threading.Thread(target=watch, name="realm-ctrl-c", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        os.write(write_fd, b"\0")
        watcher.join()
        os.close(read_fd)
        os.close(write_fd)


def _finish_stream(result: RunResult) -> None:
    if result.text and not result.text.endswith("\n"):
        write_stdout("\n")


def finish_notice(result: RunResult) -> str:
    """The one line on stderr after a run: why it ended, the token counts, the time."""
    if result.finish_reason is None or result.completion_tokens is None:
        return f"done in {result.seconds:.2f} s (the guest reported no finish reason)"
    counts = f"{result.prompt_tokens} prompt + {result.completion_tokens} completion tokens"
    rate = f", {result.completion_tokens / result.seconds:.1f} tok/s" if result.seconds > 0 else ""
    meaning = FINISH_REASONS.get(result.finish_reason, "")
    return (f"finish_reason: {result.finish_reason}" + (f" ({meaning})" if meaning else "")
            + f"; {counts} in {result.seconds:.2f} s{rate}")


def _print_trace(result: RunResult, label: str, n_layers: int, decode_s: float | None = None) -> None:
    table = Table("host function", "calls", "total ms", "mean µs", title=f"host calls by {label}")
    called = [(name, s) for name, s in result.trace.items() if s.calls]
    for name, s in sorted(called, key=lambda item: -item[1].seconds):
        table.add_row(name, str(s.calls), f"{s.seconds * 1e3:.2f}", f"{s.seconds / s.calls * 1e6:.1f}")
    stderr = stderr_console()
    stderr.print(table)
    def calls(name: str) -> int:
        return result.trace[name].calls if name in result.trace else 0

    whole, layers = calls("seq_step") + calls("seq_step_all"), calls("forward_layer")
    steps = calls("seq_finish") + whole
    stderr.print(f"{steps} steps x {n_layers} layers -> {whole} whole-step seq_step(_all) calls and "
                 f"{layers} forward_layer calls; {result.tokens_fed} tokens fed; "
                 f"{result.fuel_used:,} fuel; {result.seconds:.2f} s", highlight=False, soft_wrap=True)
    figures = speculation_figures(result, decode_s)
    if figures:
        stderr.print("speculation: " + ", ".join(f"{k} {v}" for k, v in figures.items()), highlight=False,
                     soft_wrap=True)


def _result_json(result: RunResult, label: str, timings: dict[str, float | None],
                 decode_s: float | None = None) -> dict[str, Any]:
    return {"speculation": speculation_figures(result, decode_s), "guest": label, "text": result.text,
            "status": result.status, "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "cached_tokens": result.steps.cached_tokens, "timings": timings, "seconds": result.seconds,
            "fuel_used": result.fuel_used,
            "tokens_fed": result.tokens_fed, "logs": result.logs,
            "trace": {name: {"calls": s.calls, "seconds": s.seconds} for name, s in result.trace.items() if s.calls}}
