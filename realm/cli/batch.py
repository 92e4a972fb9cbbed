"""`realm batch REQUESTS.jsonl`: many requests through their guests at once, batched by the scheduler.

Each input line is one JSON object: `prompt`, the sampling fields of `realm run` (`temperature`,
`top_k`, ..., `seed`, `max_tokens`), `stop`, any extra field the guest reads (e.g. `choices`), and
optionally `tenant` (a registered tenant: its deployed guest and limits; default the reference
guest under default limits). Results are JSON lines in input order: `text`, `finish_reason`,
`prompt_tokens`, `completion_tokens`, `ttft_ms` (until the guest's first text), `total_ms`; or
`error`. A line that is not a request, and a request that fails, get an error of their own; the
rest run. Exit status 1 if any line failed.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from host_functions.abi import AdapterBinding, Limits
from host_functions.engine.model import Model
from host_functions.errors import RealmError
from realm.cli import main
from realm.cli.options import kv_memory_option, load_with_progress, model_options, stderr
from realm.cli.run import _check_sampling, adapter_bindings, speculation_request
from realm.models import draft_opener
from realm.sandbox.run import GuestModule, TenantSandbox, compile_guest, reference_guest_path
from realm.tenants import TenantRegistry

DEFAULT_CONCURRENCY = 16


@dataclass
class _Job:
    line: int
    tenant: str
    request: dict[str, Any]
    guest: GuestModule
    limits: Limits
    adapters: dict[str, AdapterBinding]
    draft_files: list[str]


@main.command()
@click.argument("requests_file", metavar="REQUESTS.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@model_options
@kv_memory_option
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the result lines here instead of stdout.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=DEFAULT_CONCURRENCY, show_default=True,
              help="Requests in flight at once.")
@click.option("--stats", "show_stats", is_flag=True,
              help="After the run, print the scheduler's batch sizes and KV pool use as JSON on stderr.")
def batch(requests_file: Path, model_path: str | None, backend: str, kv_memory: int | None, out_file: Path | None,
          concurrency: int, show_stats: bool) -> None:
    """Run every request of REQUESTS.jsonl concurrently; one JSON result line per request, in order."""
    try:
        lines = requests_file.read_bytes().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RealmError(f"cannot read {requests_file}: {exc}") from None
    if out_file is not None and not out_file.parent.is_dir():
        raise RealmError(f"cannot write {out_file}: no such directory")
    results: dict[int, dict[str, Any]] = {}
    jobs = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            jobs.append(_parse(number, text))
        except (RealmError, click.UsageError) as exc:
            results[number] = {"line": number, "error": f"line {number}: {_message(exc)}"}
    model = load_with_progress(model_path, backend, kv_memory)
    sched = model.scheduler
    model.backend.kv_pool.reset_peak()
    columns = (TextColumn("[bold]batch[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
        task = bar.add_task("requests", total=len(jobs))
        lock = threading.Lock()

        def run_one(job: _Job) -> None:
            outcome = _run(model, job)
            with lock:
                results[job.line] = outcome
                bar.advance(task)

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="realm-batch") as pool:
            list(pool.map(run_one, jobs))
    _write(out_file, [results[n] for n in sorted(results)])
    if show_stats:
        kv = model.backend.kv_pool.stats()
        stderr.print(json.dumps({"steps": sched.stats.steps, "mean_batch": round(sched.stats.mean_batch, 3),
                                 "max_batch": sched.stats.max_batch, "kv_blocks_used": kv.blocks_used,
                                 "kv_blocks_peak": kv.blocks_peak, "kv_tokens_peak": kv.blocks_peak * kv.block_tokens,
                                 "kv_bytes_peak": kv.blocks_peak * kv.block_bytes}), soft_wrap=True, highlight=False)
    failed = sum(1 for r in results.values() if "error" in r)
    if failed:
        stderr.print(f"{failed} of {len(results)} requests failed", highlight=False)
        raise SystemExit(1)


def _parse(number: int, text: str) -> _Job:
    """One input line as a job; RealmError or click.UsageError saying what is wrong with it."""
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RealmError(f"not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise RealmError("a request must be a JSON object")
    tenant = request.pop("tenant", None)
    if not isinstance(request.get("prompt"), str):
        raise RealmError("a request needs a string \"prompt\"")
    if isinstance(request.get("stop"), str):
        request["stop"] = [request["stop"]]
    _check_sampling(request)
    draft_files = speculation_request(request, request.pop("speculative", None))
    if tenant is not None and not isinstance(tenant, str):
        raise RealmError("\"tenant\" must be a tenant name")
    adapters = _line_adapters(request, tenant)
    if tenant is None:
        return _Job(number, "", request, compile_guest(reference_guest_path().read_bytes()), Limits(), adapters,
                    draft_files)
    registry = TenantRegistry()
    return _Job(number, tenant, request, registry.guest(tenant), registry.get(tenant).limits, adapters, draft_files)


def _line_adapters(request: dict[str, Any], tenant: str | None) -> dict[str, AdapterBinding]:
    """A line's "lora": one of its tenant's aliases, or an adapter file applied at "lora_scale" in
    "lora_mode" ("unmerged" or "merged"); either of those without a "lora" is an error, not ignored."""
    if "lora" not in request and ("lora_scale" in request or "lora_mode" in request):
        raise RealmError("\"lora_scale\" and \"lora_mode\" need a \"lora\" adapter")
    scale = request.pop("lora_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise RealmError("\"lora_scale\" must be a number")
    mode = request.pop("lora_mode", "unmerged")
    if mode not in ("unmerged", "merged"):
        raise RealmError("\"lora_mode\" must be \"unmerged\" or \"merged\"")
    lora = request.pop("lora", None)
    bindings = TenantRegistry().adapters(tenant) if tenant else {}
    if lora is None:
        return bindings
    if not isinstance(lora, str) or not lora:
        raise RealmError("\"lora\" must be an adapter file or one of the tenant's adapter aliases")
    if lora in bindings:
        request["lora"] = lora
        return bindings
    return adapter_bindings(request, tenant, lora, float(scale), merged=mode == "merged")


def _run(model: Model, job: _Job) -> dict[str, Any]:
    started = time.perf_counter()
    first: list[float] = []

    def on_text(_: str) -> None:
        if not first:
            first.append(time.perf_counter())

    out: dict[str, Any] = {"line": job.line}
    if job.tenant:
        out["tenant"] = job.tenant
    try:
        result = TenantSandbox(model, job.limits, tenant=job.tenant).run(
            job.guest, job.request, on_text=on_text, adapters=job.adapters,
            open_draft=draft_opener(model, model.backend.name, job.draft_files))
    except RealmError as exc:
        out["error"] = _message(exc)
        return out
    out.update(text=result.text, finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
               completion_tokens=result.completion_tokens,
               ttft_ms=round((first[0] - started) * 1e3, 3) if first else None,
               total_ms=round((time.perf_counter() - started) * 1e3, 3))
    return out


def _message(exc: Exception) -> str:
    return exc.format_message() if isinstance(exc, click.ClickException) else str(exc)


def _write(out_file: Path | None, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if out_file is None:
        click.echo(text, nl=False)
        return
    try:
        out_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RealmError(f"cannot write {out_file}: {exc}") from None
