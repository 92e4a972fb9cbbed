"""`loadtest.py --multi-turn`: multi-turn chat against `realm serve`, with and without the prefix cache.

Each of --tenants tenants holds one conversation of --turns turns (chat completions, streamed, greedy,
--max-tokens each); every turn resends the whole history after a per-tenant document as system
prompt, so each turn's prompt starts with the previous one. The same workload runs on a server with
the prefix cache and on one with `--no-prefix-cache`, alternating for --rounds rounds (each side's
best run counts); each run reports TTFT p50/p99, completion tok/s, the prompt tokens the usage
reported as cached, and the server's prefix-cache hit rate (/metrics).

Then the long-prefix check on the cached server: tenant A sends a ~1.5k-token document (cold), then a
follow-up that extends it (cached); tenant B sends the same follow-up (never A's cache: a cold
TTFT). Reported as TTFTs and `followup_speedup` (cold / follow-up) and `other_tenant_vs_cold`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import openai

DOCUMENT = ("Tenant {t}'s handbook, section {i}: requests are logged, reviewed every morning, answered within a "
            "day, and archived after a month; exceptions need a manager's note and a ticket number. ")
QUESTIONS = ("What is this handbook about?", "How fast are requests answered?", "When are they archived?",
             "What do exceptions need?", "Who reviews the requests?", "Summarise it in one line.",
             "Is anything logged?", "What happens every morning?")


def multi_turn_main(args: argparse.Namespace, open_server: Callable[[bool], Any]) -> dict:
    """Both sides for --rounds rounds, alternating (each side's run of best TTFT p50 counts), the
    long-prefix check on the cached side; the report. open_server(no_prefix_cache) is a
    loadtest.OwnServer."""
    import loadtest  # the sibling script, on sys.path when it runs this

    runs: dict[str, list[dict]] = {"cached": [], "no_prefix_cache": []}
    for _ in range(args.rounds):
        for side in runs:
            server = open_server(side == "no_prefix_cache")
            with server as (url, keys):
                args.model_id = loadtest._model_id(url, keys[0])
                report = conversations(url, keys, args)
                report["engine"] = server.engine_figures("prefix_cache")
                if side == "cached":
                    report["long_prefix"] = long_prefix(url, keys, args)
                runs[side].append(report)
    best = {side: min(got, key=lambda r: r["ttft_p50_s"]) for side, got in runs.items()}
    on, off = best["cached"], best["no_prefix_cache"]
    best["ratios"] = {"ttft_p50_off_vs_on": round(off["ttft_p50_s"] / on["ttft_p50_s"], 3),
                      "ttft_p99_off_vs_on": round(off["ttft_p99_s"] / on["ttft_p99_s"], 3),
                      "tok_s_on_vs_off": round(on["completion_tok_s"] / off["completion_tok_s"], 3)}
    return best


def conversations(url: str, keys: list[str], args: argparse.Namespace) -> dict:
    """One conversation of args.turns turns per tenant, all tenants at once."""
    import loadtest

    ttfts: list[float] = []
    counts = {"prompt": 0, "cached": 0, "completion": 0}

    def tenant(i: int) -> None:
        api = openai.OpenAI(base_url=url + "/v1", api_key=keys[i], max_retries=0, timeout=args.timeout)
        document = "".join(DOCUMENT.format(t=i, i=j) for j in range(args.document_sections))
        history = [{"role": "system", "content": document}]
        for turn in range(args.turns):
            history.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
            ttft, text, usage = _stream_chat(api, args, history)
            history.append({"role": "assistant", "content": text})
            ttfts.append(ttft)
            counts["prompt"] += usage.prompt_tokens
            counts["completion"] += usage.completion_tokens
            details = usage.prompt_tokens_details
            counts["cached"] += details.cached_tokens if details and details.cached_tokens else 0

    started = time.monotonic()
    loadtest._run_threads(len(keys), tenant)
    seconds = time.monotonic() - started
    return {"turns": len(ttfts), "seconds": round(seconds, 2),
            "ttft_p50_s": loadtest._pct(ttfts, 50), "ttft_p99_s": loadtest._pct(ttfts, 99),
            "completion_tok_s": round(counts["completion"] / seconds, 2), "prompt_tokens": counts["prompt"],
            "cached_prompt_tokens": counts["cached"],
            "cached_fraction": round(counts["cached"] / counts["prompt"], 3) if counts["prompt"] else 0.0}


def long_prefix(url: str, keys: list[str], args: argparse.Namespace) -> dict:
    """TTFT of a ~1.5k-token prompt cold, of its follow-up by the same tenant, and by another tenant."""
    apis = [openai.OpenAI(base_url=url + "/v1", api_key=k, max_retries=0, timeout=args.timeout) for k in keys[:2]]
    document = "".join(DOCUMENT.format(t="shared", i=j) for j in range(40))  # about 1.5k tokens
    first = [{"role": "user", "content": document + "\nWhat is this about?"}]
    cold, _, usage = _stream_chat(apis[0], args, first)
    follow_up = [*first, {"role": "assistant", "content": "A handbook."}, {"role": "user", "content": "Who signs?"}]
    warm, _, warm_usage = _stream_chat(apis[0], args, follow_up)
    other, _, other_usage = _stream_chat(apis[1], args, follow_up)
    return {"prompt_tokens": usage.prompt_tokens, "cold_ttft_s": round(cold, 3), "followup_ttft_s": round(warm, 3),
            "followup_cached_tokens": warm_usage.prompt_tokens_details.cached_tokens,
            "other_tenant_ttft_s": round(other, 3),
            "other_tenant_cached_tokens": other_usage.prompt_tokens_details.cached_tokens,
            "followup_speedup": round(cold / warm, 2), "other_tenant_vs_cold": round(other / cold, 3)}


def _stream_chat(api: openai.OpenAI, args: argparse.Namespace, messages: list[dict]) -> tuple[float, str, object]:
    """(time to the first text, the answer, the usage) of one streamed greedy chat completion."""
    t0 = time.perf_counter()
    ttft, parts, usage = None, [], None
    for chunk in api.chat.completions.create(model=args.model_id, messages=messages, max_tokens=args.max_tokens,
                                             temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0 if ttft is None else ttft
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    return (time.perf_counter() - t0 if ttft is None else ttft), "".join(parts), usage


