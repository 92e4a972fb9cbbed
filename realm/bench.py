"""`realm bench`: load time, prefill and decode speed, memory, and the cost of the guest boundary.

Figures are wall-clock on this machine; compare them only with a baseline measured in the same run.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from host_functions.model import Model

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
              guest_decode: Callable[[Model, list[int], int], float] | None = None) -> BenchResult:
    """Load a model and measure it; `guest_decode` (seconds per token through a guest) adds overhead."""
    start = time.perf_counter()
    model = load()
    load_s = time.perf_counter() - start
    prompt = bench_prompt(model, n_prompt)
    measure_decode(model, prompt[:8], 4)  # warm caches and pipelines before timing
    prefill_s = measure_prefill(model, prompt)
    decode_s = measure_decode(model, prompt, n_decode)
    weight_bytes = model.backend.weight_bytes_per_token()
    overhead = None
    if guest_decode is not None:
        guest_s = guest_decode(model, prompt, n_decode)
        overhead = 100.0 * (guest_s - decode_s) / decode_s
    return BenchResult(
        model=str(model.path.name), backend=model.backend.name, load_s=load_s,
        prefill_tok_s=len(prompt) / prefill_s, decode_tok_s=1.0 / decode_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        weight_bytes_per_token=weight_bytes, decode_gb_s=weight_bytes / decode_s / 1e9,
        guest_overhead_pct=overhead,
    )


def guest_decode_seconds(model: Model, prompt: list[int], n_tokens: int) -> float:
    """Seconds per decoded token when the reference guest drives greedy generation.

    The guest's whole request is timed, and the prompt's prefill (measured directly) is taken off,
    leaving the steps that each fed one token: the same work `measure_decode` times without a guest.
    """
    from realm.sandbox import TenantSandbox, compile_guest, reference_guest_path

    guest = compile_guest(reference_guest_path().read_bytes())
    sandbox = TenantSandbox(model)
    request = {"prompt": model.tokenizer.decode(prompt), "max_tokens": n_tokens + 1, "temperature": 0}
    sandbox.run(guest, {**request, "max_tokens": 4})  # warm: instantiate once before timing
    result = sandbox.run(guest, request)
    decode_steps = result.trace["forward_layer"].calls // model.config.n_layers - 1  # after one prefill step
    n_prompt = result.tokens_fed - decode_steps
    return (result.seconds - measure_prefill(model, prompt[:n_prompt])) / max(decode_steps, 1)
