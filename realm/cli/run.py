"""`realm run [PROMPT]`: generate text through a guest (the reference guest unless told otherwise)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from host_functions.abi import Limits
from host_functions.sampling import SamplingParams
from realm.cli import main
from realm.cli.options import kv_memory_option, load_with_progress, model_options
from host_functions.errors import RealmError, TenantError
from realm.sandbox import GuestModule, RunResult, TenantSandbox, compile_guest, reference_guest_path
from realm.tenants import TenantRegistry

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


def sampling_options(func: Any) -> Any:
    """Add every sampling flag (default: absent, so the guest and host defaults apply) and --stop."""
    for flag, key, kind, help_text in reversed(SAMPLING_FLAGS):
        func = click.option(flag, key, type=kind, default=None, help=help_text)(func)
    return click.option("--stop", "stop", multiple=True, help="Stop before this text (repeatable).")(func)


@main.command()
@click.argument("prompt", required=False)
@model_options
@kv_memory_option
@sampling_options
@click.option("--tenant", "tenant_name", metavar="NAME", help="Run tenant NAME's deployed guest, with its limits.")
@click.option("--guest", "guest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run this guest module (.wasm or .wat) instead of the reference guest.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help='Extra request field for the guest, VALUE as JSON if it parses (e.g. choices=\'["a","b"]\').')
@click.option("--trace", is_flag=True, help="After the run, show every host function the guest called.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
def run(prompt: str | None, model_path: str | None, backend: str, kv_memory: int | None, stop: tuple[str, ...],
        tenant_name: str | None, guest_file: Path | None, params: tuple[str, ...], trace: bool, as_json: bool, **sampling: Any) -> None:
    """Generate a continuation of PROMPT (or stdin) through a WebAssembly guest, streaming its text."""
    if tenant_name and guest_file:
        raise click.UsageError("--tenant and --guest are alternatives: give one")
    if prompt is None:
        prompt = click.get_text_stream("stdin").read()
    request = build_request(prompt, sampling, stop, params)
    _check_sampling(request)
    guest, limits, label = _select_guest(tenant_name, guest_file)
    model = load_with_progress(model_path, backend, kv_memory)
    sandbox = TenantSandbox(model, limits, tenant=tenant_name or "")
    try:
        result = sandbox.run(guest, request, on_text=None if as_json else _stream)
    except RealmError as exc:
        if trace and getattr(exc, "result", None) is not None:
            _finish_stream(exc.result)  # type: ignore[attr-defined]
            _print_trace(exc.result, label, model.config.n_layers)  # type: ignore[attr-defined]
        raise
    if as_json:
        click.echo(json.dumps(_result_json(result, label)))
        return
    _finish_stream(result)
    if trace:
        _print_trace(result, label, model.config.n_layers)


def build_request(prompt: str, sampling: dict[str, Any], stop: tuple[str, ...], params: tuple[str, ...]) -> dict:
    """The JSON request a guest receives: prompt, the sampling flags given, stop strings, extra fields."""
    request: dict[str, Any] = {"prompt": prompt}
    request.update({key: value for key, value in sampling.items() if value is not None})
    if stop:
        request["stop"] = list(stop)
    for item in params:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        try:
            request[key] = json.loads(text)
        except json.JSONDecodeError:
            request[key] = text
    return request


def _check_sampling(request: dict[str, Any]) -> None:
    """Refuse bad sampling flags before loading anything (the guest's sampler would refuse them later)."""
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    given = {k: tuple(v) if k == "stop" else v for k, v in request.items() if k in names}
    try:
        SamplingParams(**given).validate()
    except TypeError as exc:
        raise click.UsageError(str(exc)) from None


def _select_guest(tenant_name: str | None, guest_file: Path | None) -> tuple[GuestModule, Limits, str]:
    if tenant_name:
        registry = TenantRegistry()
        return registry.guest(tenant_name), registry.get(tenant_name).limits, f"tenant {tenant_name}"
    path = guest_file or reference_guest_path()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TenantError(f"cannot read {path}: {exc}") from None
    return compile_guest(data), Limits(), path.name


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _finish_stream(result: RunResult) -> None:
    if result.text and not result.text.endswith("\n"):
        _stream("\n")


def _print_trace(result: RunResult, label: str, n_layers: int) -> None:
    table = Table("host function", "calls", "total ms", "mean µs", title=f"host calls by {label}")
    called = [(name, s) for name, s in result.trace.items() if s.calls]
    for name, s in sorted(called, key=lambda item: -item[1].seconds):
        table.add_row(name, str(s.calls), f"{s.seconds * 1e3:.2f}", f"{s.seconds / s.calls * 1e6:.1f}")
    Console(file=sys.stdout).print(table)
    steps = result.trace["seq_finish"].calls if "seq_finish" in result.trace else 0
    layers = result.trace["forward_layer"].calls if "forward_layer" in result.trace else 0
    click.echo(f"{steps} steps x {n_layers} layers -> {layers} forward_layer calls; {result.tokens_fed} tokens fed; "
               f"{result.fuel_used:,} fuel; {result.seconds:.2f} s")


def _result_json(result: RunResult, label: str) -> dict[str, Any]:
    return {"guest": label, "text": result.text, "status": result.status, "seconds": result.seconds,
            "fuel_used": result.fuel_used, "tokens_fed": result.tokens_fed, "logs": result.logs,
            "trace": {name: {"calls": s.calls, "seconds": s.seconds} for name, s in result.trace.items() if s.calls}}
