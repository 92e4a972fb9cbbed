"""`realm bench`: load time, prefill and decode speed, memory, and the cost of the guest boundary;
with --concurrency, aggregate speed, latency and KV use of concurrent requests on the scheduler.

Figures are wall-clock on this machine; compare them only with a baseline measured in the same run.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from host_functions.engine.model import Model
from host_functions.engine.sampling import SamplingParams
from host_functions.errors import RealmError
from realm.bench.concurrent import run_at_once
from realm.models import scheduled

BENCH_TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by rewiring "
    "panels; later, stored programs let the same hardware run any algorithm. Assemblers, compilers and "
    "operating systems each hid a layer of detail so that people could think about larger problems. "
)


@dataclass
class BenchResult:
    """One benchmark run; `as_json()` has the keys the CLI prints."""

    model: str
    backend: str
    load_s: float
    prefill_tok_s: float
    decode_tok_s: float
    peak_rss_mb: float
    file_mb: float
    kv_peak_mb: float  # the KV pool's most blocks in use at once, in MiB
    rss_vs_file_plus_kv: float  # peak_rss_mb / (file_mb + kv_peak_mb)
    weight_bytes_per_token: int
    decode_gb_s: float
    guest_overhead_pct: float | None = None

    def as_json(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def bench_prompt(model: Model, n_tokens: int) -> list[int]:
    """A natural-text prompt of exactly n_tokens tokens (BOS first)."""
    ids = model.tokenizer.encode(BENCH_TEXT)
    while len(ids) < n_tokens:
        ids += model.tokenizer.encode(BENCH_TEXT, add_bos=False)
    return ids[:n_tokens]


def measure_prefill(model: Model, prompt: list[int]) -> float:
    """Seconds to run the whole prompt through every layer in one batched step."""
    seq = model.open_sequence(len(prompt))
    start = time.perf_counter()
    seq.step(prompt)
    elapsed = time.perf_counter() - start
    seq.close()
    return elapsed


def measure_decode(model: Model, prompt: list[int], n_tokens: int) -> float:
    """Seconds per decoded token (greedy), after an untimed prefill."""
    seq = model.open_sequence(len(prompt) + n_tokens + 1)
    logits = seq.step(prompt)
    start = time.perf_counter()
    for _ in range(n_tokens):
        logits = seq.step([int(np.argmax(logits))])
    elapsed = time.perf_counter() - start
    seq.close()
    return elapsed / n_tokens


def run_bench(load: Callable[[], Model], n_prompt: int = 128, n_decode: int = 128,
              with_guest: bool = True) -> BenchResult:
    """Load a model and measure it; `with_guest` adds the reference guest's overhead."""
    start = time.perf_counter()
    model = load()
    load_s = time.perf_counter() - start
    prompt = bench_prompt(model, n_prompt)
    measure_decode(model, prompt[:8], 4)  # warm caches and pipelines before timing
    prefill_s = measure_prefill(model, prompt)
    decode_s = measure_decode(model, prompt, n_decode)
    weight_bytes = model.backend.weight_bytes_per_token()
    peak_rss_mb = peak_rss_bytes() / 2**20  # before the guest adds its own
    file_mb, kv_mb = model.path.stat().st_size / 2**20, kv_peak_bytes(model) / 2**20
    overhead = guest_overhead_pct(model, min(n_decode, 64)) if with_guest else None
    return BenchResult(
        model=str(model.path.name), backend=model.backend.name, load_s=load_s,
        prefill_tok_s=len(prompt) / prefill_s, decode_tok_s=1.0 / decode_s, peak_rss_mb=peak_rss_mb,
        file_mb=file_mb, kv_peak_mb=kv_mb, rss_vs_file_plus_kv=peak_rss_mb / (file_mb + kv_mb),
        weight_bytes_per_token=weight_bytes, decode_gb_s=weight_bytes / decode_s / 1e9,
        guest_overhead_pct=overhead,
    )


def peak_rss_bytes() -> int:
    """This process's peak resident memory: Linux's VmHWM, which starts afresh at exec. (getrusage's
    ru_maxrss does not: a process started by a larger one, such as a test runner, inherits its peak.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def kv_peak_bytes(model: Model) -> int:
    """Bytes of the most KV blocks in use at once so far (0 without a pool)."""
    pool = model.backend.kv_pool
    return 0 if pool is None else pool.stats().blocks_peak * pool.block_bytes


def guest_overhead_pct(model: Model, n_tokens: int, repeats: int = 5) -> float:
    """Extra time, in percent, when the reference guest drives greedy decoding instead of the host.

    Both paths run the same short prompt to the same tokens (prefill is negligible), alternating, and
    the fastest of `repeats` runs of each is compared: on a busy machine the minimum is the run that
    was least disturbed.
    """
    from host_functions.engine.generation import generate_tokens
    from realm.request.sources import for_bench

    prompt = "Once upon a time"
    params = SamplingParams(temperature=0, max_tokens=n_tokens)
    request = for_bench({"prompt": prompt, "max_tokens": n_tokens, "temperature": 0})
    direct_s, guest_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        produced = list(generate_tokens(model, model.tokenizer.encode(prompt), params))
        direct_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        request.run(model)
        guest_s.append(time.perf_counter() - start)
    if not produced:
        raise RealmError("the model ended generation at once; no decode to compare")
    return 100.0 * (min(guest_s) - min(direct_s)) / min(direct_s)


OVERHEAD_REPEATS = 3


@dataclass
class ConcurrencyResult:
    """Requests run `concurrency` at a time through the reference guest on the model's scheduler."""

    concurrency: int
    aggregate_tok_s: float  # generated tokens of all requests / wall time of the level
    p50_ms: float  # per-request latency, start to end
    p95_ms: float
    ttft_ms: float  # median time to the first emitted text
    mean_batch: float  # items per scheduler step
    kv_peak_tokens: int  # the KV pool's peak use, in positions (blocks x block size)
    direct_tok_s: float | None = None  # concurrency 1 only: the same requests with steps run directly
    scheduler_overhead_pct: float | None = None  # fastest of OVERHEAD_REPEATS alternating runs of each

    def as_json(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items() if v is not None}


def run_concurrency_bench(model: Model, levels: list[int], n_decode: int) -> list[ConcurrencyResult]:
    """Aggregate decode speed, latency and TTFT at each concurrency level (greedy, n_decode tokens each).

    Level 1 also alternates with the model's direct step runner, which gives the scheduler's cost;
    its figures are the fastest run of each (on a busy machine the least disturbed one).
    """
    from realm.request.sources import for_bench
    from realm.request.spec import FirstText

    sched, kv_pool = scheduled(model)
    request = for_bench({"prompt": BENCH_TEXT[:60], "max_tokens": n_decode, "temperature": 0})

    def level(n: int, target: Model = model) -> tuple[float, list[float], list[float], int]:
        latencies: list[float] = []
        firsts: list[float] = []

        def one(_: int) -> int:
            started = time.perf_counter()
            clock = FirstText()
            result = request.run(target, on_text=clock)
            latencies.append(time.perf_counter() - started)
            firsts.append((time.perf_counter() if clock.first is None else clock.first) - started)
            return result.completion_tokens or 0

        kv_pool.reset_peak()
        tokens, seconds = run_at_once(n, one)
        kv = kv_pool.stats()
        return tokens / seconds, latencies, firsts, kv.blocks_peak * kv.block_tokens

    dataclasses.replace(request, fields={**request.fields, "max_tokens": 4}).run(model)  # warm up
    results = []
    for n in levels:
        before_steps, before_items = sched.stats.steps, sched.stats.items
        tok_s, latencies, firsts, kv_peak = level(n)
        steps = sched.stats.steps - before_steps
        results.append(ConcurrencyResult(
            concurrency=n, aggregate_tok_s=tok_s, p50_ms=float(np.percentile(latencies, 50) * 1e3),
            p95_ms=float(np.percentile(latencies, 95) * 1e3), ttft_ms=float(np.median(firsts) * 1e3),
            mean_batch=(sched.stats.items - before_items) / steps if steps else 0.0, kv_peak_tokens=kv_peak))
    if 1 in levels:  # the scheduler's cost: alternate the two runners, keep each one's fastest run
        single = next(r for r in results if r.concurrency == 1)
        # The same weights, backend and adapters without a scheduler: each step runs at once.
        unbatched = Model(model.path, model.config, model.tokenizer, model.backend, None, model.adapters)
        batched, direct = [single.aggregate_tok_s], []
        for _ in range(OVERHEAD_REPEATS):
            batched.append(level(1)[0])
            direct.append(level(1, unbatched)[0])
        single.aggregate_tok_s, single.direct_tok_s = max(batched), max(direct)
        single.scheduler_overhead_pct = 100.0 * (max(direct) - max(batched)) / max(direct)
    return results
