#!/usr/bin/env python3
"""Benchmark `realm serve --replicas`: Ray Serve's cost, and what a second replica adds.

    python scripts/bench_replicas.py --backend cpu --threads 1 --duration 20 --rounds 2

Runs the same load (scripts/loadtest.py's: concurrent openai clients over tenants, streamed and
not) against three servers of this script's own, in turn, for --rounds rounds (alternating; each
configuration's best round counts):

- `plain`: `realm serve`, one process, no Ray;
- `ray1`: `realm serve --replicas 1` (a local Ray, Serve's HTTP proxy, one replica);
- `ray2`: `realm serve --replicas 2`, the clients' tenants split evenly over both replicas (tenants
  are made until each replica has --tenants / 2 of them: routing is by the key's hash).

Every server gets the same --threads (per replica) and --server-workers. Reports each one's
completion tok/s, requests/s, latency and TTFT, and the ratios: `ray1_vs_plain` (the proxy's
overhead) and `ray2_vs_ray1` (aggregate throughput of two replicas against one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import loadtest  # noqa: E402

CONFIGS = {"plain": [], "ray1": ["--replicas", "1"], "ray2": ["--replicas", "2"]}
_MORE_TENANTS = 4  # tenants made per one wanted, at most, to find enough on each replica


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tenants", type=int, default=4, help="an even number: half on each of two replicas")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per configuration and round")
    parser.add_argument("--max-requests", type=int, default=10_000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--server-workers", type=int, default=0, help="each server's --workers; default --clients")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1, help="kernel threads of each server (each replica)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.tenants % 2 or not 2 <= args.tenants <= args.clients:
        parser.error("need an even --tenants, 2 <= --tenants <= --clients")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, options in CONFIGS.items():
            report = _phase(args, options)
            print(f"bench_replicas: {name}: {json.dumps(report)}", file=sys.stderr, flush=True)
            if name not in best or report["completion_tok_s"] > best[name]["completion_tok_s"]:
                best[name] = report
    summary = {**best, "ray1_vs_plain": _ratio(best["ray1"], best["plain"]),
               "ray2_vs_ray1": _ratio(best["ray2"], best["ray1"])}
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0 if all(best[name]["errors"] == 0 for name in CONFIGS) else 1


def _phase(args: argparse.Namespace, options: list[str]) -> dict:
    """The load against one server of ours, with `options` added to its command line."""
    replicas = int(options[1]) if options else 1
    own = argparse.Namespace(**{**vars(args), "tenants": args.tenants * (_MORE_TENANTS if replicas > 1 else 1)})
    with loadtest.OwnServer(own, options) as (url, keys):
        model = loadtest._model_id(url, keys[0])
        chosen = _balanced(url, keys, model, replicas, args.tenants)
        work = loadtest.Workload(args.clients, args.duration, args.max_requests, args.max_tokens)
        report = loadtest.run_load(url, chosen, work, args.timeout, model)
    report["replicas"] = replicas
    return report


def _balanced(url: str, keys: list[str], model: str, replicas: int, wanted: int) -> list[str]:
    """`wanted` of `keys`, the same number on each replica (by the x-realm-replica of a first request)."""
    if replicas == 1:
        return keys[:wanted]
    by_replica: dict[str, list[str]] = {}
    for key in keys:
        answer = httpx.post(url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                            json={"model": model, "prompt": "Hi", "max_tokens": 1})
        answer.raise_for_status()
        by_replica.setdefault(answer.headers["x-realm-replica"], []).append(key)
    each = wanted // replicas
    if len(by_replica) < replicas or any(len(found) < each for found in by_replica.values()):
        raise SystemExit(f"bench_replicas: {len(keys)} tenants did not give {each} on each replica: "
                         f"{ {r: len(k) for r, k in by_replica.items()} }")
    # interleaved, so client i and client i+1 load different replicas
    return [found[i] for i in range(each) for found in by_replica.values()]


def _ratio(report: dict, base: dict) -> dict:
    """report's completion tok/s and requests/s over base's, and its p50 latency over base's."""
    def over(key: str) -> float | None:
        return round(report[key] / base[key], 3) if report.get(key) and base.get(key) else None
    return {"completion_tok_s": over("completion_tok_s"), "requests_per_s": over("requests_per_s"),
            "latency_p50": over("latency_p50_s")}


if __name__ == "__main__":
    raise SystemExit(main())
