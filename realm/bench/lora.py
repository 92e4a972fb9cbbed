"""`realm bench --lora`: what a LoRA adapter costs, as decode speed with and without it in the same run.

Alone: one sequence decodes greedily without the adapter and with it (unmerged or merged), the two
alternating `repeats` times; each figure is its fastest run (on a busy machine the least disturbed),
and the ratio compares them. With --concurrency: at each level, N requests at once through the
reference guest on the scheduler, without adapters and with the request i using adapter i mod K (K
adapters: the files given, or one file at K scales), alternating the same way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from host_functions.abi import AdapterBinding
from host_functions.engine.model import Model
from host_functions.lora.adapter import LoraAdapter
from realm.bench.concurrent import run_at_once
from realm.bench.speed import BENCH_TEXT, bench_prompt

SPREAD_SCALES = (1.0, 0.75, 0.5, 0.25)  # one file as several adapters: the same pairs at other scales


@dataclass
class LoraBenchResult:
    """One sequence's decode speed without and with an adapter, measured alternately."""

    model: str
    backend: str
    lora: str
    lora_rank: int
    lora_scale: float
    lora_mode: str
    decode_tok_s: float  # without the adapter
    lora_decode_tok_s: float
    ratio: float  # lora_decode_tok_s / decode_tok_s

    def as_json(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class LoraConcurrencyResult:
    """N requests at once without adapters and over `adapters` different adapters."""

    concurrency: int
    adapters: int
    lora_mode: str
    aggregate_tok_s: float  # without adapters
    lora_aggregate_tok_s: float
    ratio: float

    def as_json(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def lora_bindings(files: list[str], scale: float, merged: bool, spread: int) -> list[AdapterBinding]:
    """The adapters a concurrency run spreads its requests over: each file once, or one file at
    `spread` scales (scale times SPREAD_SCALES)."""
    if len(files) > 1:
        return [AdapterBinding(f, scale, merged) for f in files]
    return [AdapterBinding(files[0], scale * s, merged) for s in SPREAD_SCALES[:spread]]


def decode_tok_s(model: Model, prompt: list[int], n_tokens: int, lora: tuple[LoraAdapter, float] | None,
                 merged: bool) -> float:
    """Greedy decode speed of one sequence after an untimed prefill, with an optional adapter."""
    seq = model.open_sequence(len(prompt) + n_tokens + 1)
    try:
        if lora is not None:
            seq.set_adapter(*lora, merged=merged)
        logits = seq.step(prompt)
        start = time.perf_counter()
        for _ in range(n_tokens):
            logits = seq.step([int(np.argmax(logits))])
        return n_tokens / (time.perf_counter() - start)
    finally:
        seq.close()


def run_lora_bench(model: Model, lora_file: str, scale: float, merged: bool, n_prompt: int, n_decode: int,
                   repeats: int = 3) -> LoraBenchResult:
    """Decode tok/s without and with the adapter, alternating `repeats` times, fastest of each.

    Raises AdapterError when the adapter does not fit the model (or, merged, its budget).
    """
    adapter = model.adapters.acquire(lora_file)
    try:
        prompt = bench_prompt(model, n_prompt)
        decode_tok_s(model, prompt[:8], 4, (adapter, scale), merged)  # warm up: fused and merged forms
        plain, adapted = [], []
        for _ in range(repeats):
            plain.append(decode_tok_s(model, prompt, n_decode, None, merged))
            adapted.append(decode_tok_s(model, prompt, n_decode, (adapter, scale), merged))
    finally:
        model.adapters.release(adapter)
    return LoraBenchResult(
        model=model.path.name, backend=model.backend.name, lora=adapter.name, lora_rank=adapter.max_rank,
        lora_scale=scale, lora_mode="merged" if merged else "unmerged", decode_tok_s=max(plain),
        lora_decode_tok_s=max(adapted), ratio=max(adapted) / max(plain))


def run_lora_concurrency_bench(model: Model, levels: list[int], n_decode: int, bindings: list[AdapterBinding],
                               repeats: int = 2) -> list[LoraConcurrencyResult]:
    """At each level, aggregate decode tok/s of N concurrent requests through the reference guest,
    without adapters and with request i on bindings[i % len(bindings)]; fastest of `repeats` each.

    Raises GuestError when a request fails (an adapter that does not fit the model, say).
    """
    from realm.request.sources import for_bench

    fields = {"prompt": BENCH_TEXT[:60], "max_tokens": n_decode, "temperature": 0}
    aliases = {f"a{i}": binding for i, binding in enumerate(bindings)}

    def level(n: int, with_lora: bool) -> float:
        def one(i: int) -> int:
            job = {**fields, "lora": f"a{i % len(bindings)}"} if with_lora else fields
            return for_bench(job, aliases).run(model).completion_tokens or 0

        tokens, seconds = run_at_once(n, one)
        return tokens / seconds

    for alias in aliases:  # load every adapter (and build merged copies) before timing
        for_bench({**fields, "max_tokens": 4, "lora": alias}, aliases).run(model)
    mode = "merged" if bindings[0].merged else "unmerged"
    results = []
    for n in levels:
        plain, adapted = [], []
        for _ in range(repeats):
            plain.append(level(n, False))
            adapted.append(level(n, True))
        results.append(LoraConcurrencyResult(n, min(n, len(bindings)), mode, max(plain), max(adapted),
                                             max(adapted) / max(plain)))
    return results
