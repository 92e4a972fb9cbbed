"""`realm batch REQUESTS.jsonl`: many requests through their guests at once, batched by the scheduler.

Each input line is one JSON object: `prompt`, the sampling fields of `realm run` (`temperature`,
`top_k`, ..., `seed`, `max_tokens`), `stop`, any extra field the guest reads (e.g. `choices`), and
optionally `tenant` (a registered tenant: its deployed guest and limits; default the reference
guest under default limits). Results are JSON lines in input order: `text`, `finish_reason`,
`prompt_tokens`, `completion_tokens`, `ttft_ms` (until the guest's first text), `total_ms`; or
`error`. Lines end at "\n" only (a raw U+2028 or U+2029 inside a JSON string is text). A line that
is not UTF-8 or not a request, and a request that fails, get an error of their own; the rest run.
Exit status 1 if any line failed. (A line's fields: realm.request.sources.from_batch_line.)
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from host_functions.engine.model import Model
from host_functions.errors import RealmError
from realm.cli import main
from realm.cli.options import kv_memory_option, load_with_progress, model_options, prefix_cache_option, stderr
from realm.models import scheduled
from realm.request.sources import from_batch_line
from realm.request.spec import FirstText, RunRequest

DEFAULT_CONCURRENCY = 16


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
@prefix_cache_option
def batch(requests_file: Path, model_path: str | None, backend: str, kv_memory: int | None, out_file: Path | None,
          concurrency: int, show_stats: bool, no_prefix_cache: bool) -> None:
    """Run every request of REQUESTS.jsonl concurrently; one JSON result line per request, in order."""
    try:
        # Lines end at b"\n" only: str.splitlines would also split at U+2028, U+2029 and other
        # characters JSON strings may hold raw, and attribute the halves to the wrong lines.
        lines = requests_file.read_bytes().split(b"\n")
    except OSError as exc:
        raise RealmError(f"cannot read {requests_file}: {exc}") from None
    if out_file is not None and not out_file.parent.is_dir():
        raise RealmError(f"cannot write {out_file}: no such directory")
    results: dict[int, dict[str, Any]] = {}
    jobs: list[tuple[int, RunRequest]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            jobs.append((number, from_batch_line(_decoded(raw))))
        except RealmError as exc:
            results[number] = {"line": number, "error": f"line {number}: {exc}"}
    model = load_with_progress(model_path, backend, kv_memory, prefix_cache=not no_prefix_cache)
    sched, kv_pool = scheduled(model)
    kv_pool.reset_peak()
    columns = (TextColumn("[bold]batch[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
        task = bar.add_task("requests", total=len(jobs))
        lock = threading.Lock()

        def run_one(job: tuple[int, RunRequest]) -> None:
            outcome = _run(model, *job)
            with lock:
                results[job[0]] = outcome
                bar.advance(task)

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="realm-batch") as workers:
            list(workers.map(run_one, jobs))
    _write(out_file, [results[n] for n in sorted(results)])
    if show_stats:
        kv = kv_pool.stats()
        stderr.print(json.dumps({"steps": sched.stats.steps, "mean_batch": round(sched.stats.mean_batch, 3),
                                 "max_batch": sched.stats.max_batch, "kv_blocks_used": kv.blocks_used,
                                 "kv_blocks_peak": kv.blocks_peak, "kv_tokens_peak": kv.blocks_peak * kv.block_tokens,
                                 "kv_bytes_peak": kv.blocks_peak * kv.block_bytes}), soft_wrap=True, highlight=False)
    failed = sum(1 for r in results.values() if "error" in r)
    if failed:
        stderr.print(f"{failed} of {len(results)} requests failed", highlight=False)
        raise SystemExit(1)


def _decoded(raw: bytes) -> str:
    """A line as text; RealmError (that line's error) if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RealmError(f"not UTF-8 text: byte {exc.start} of the line is {raw[exc.start]:#04x}") from None


def _run(model: Model, line: int, request: RunRequest) -> dict[str, Any]:
    started = time.perf_counter()
    clock = FirstText()
    out: dict[str, Any] = {"line": line}
    if request.tenant:
        out["tenant"] = request.tenant
    try:
        result = request.run(model, on_text=clock)
    except RealmError as exc:
        out["error"] = str(exc)
        return out
    out.update(text=result.text, finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
               completion_tokens=result.completion_tokens, cached_tokens=result.steps.cached_tokens,
               ttft_ms=None if clock.first is None else round((clock.first - started) * 1e3, 3),
               total_ms=round((time.perf_counter() - started) * 1e3, 3))
    return out


def _write(out_file: Path | None, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if out_file is None:
        click.echo(text, nl=False)
        return
    try:
        out_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RealmError(f"cannot write {out_file}: {exc}") from None
