#!/usr/bin/env python3
"""Realm's speed against llama.cpp's own native tools on the same GGUF file, in the same run.

    python scripts/bench_vs_llamacpp.py                      # 1 and 2 threads, best of 3
    PEER_BIN=/path/to/llama.cpp/build/bin python scripts/bench_vs_llamacpp.py --threads 1 --repeats 5

Per thread count: prefill and decode of `realm bench` (cpu backend, no guest) against `llama-bench`
(pp/tg), and the aggregate decode of --sequences requests at once through the reference guest and the
scheduler (`realm bench --concurrency`, prefill of the short prompts included) against
`llama-batched-bench` at as many sequences (decode only). Runs alternate, Realm and llama.cpp, and
the best of --repeats of each is kept, because the machine may be shared. llama.cpp is found
through $PEER_BIN or built once from source (scripts/llama_peer.py says why not llama-cpp-python).
Prints one JSON object: the ratios (Realm / llama.cpp; above 1 Realm is faster) and every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import llama_peer

from realm.models import resolve_model_path

REALM = str(Path(sys.executable).with_name("realm"))


def realm_bench(model: str, backend: str, threads: int, n_prompt: int, n_decode: int) -> dict[str, float]:
    out = _realm(["bench", "--json", "--no-guest", "--model", model, "--backend", backend, "--threads", str(threads),
                  "--prompt-tokens", str(n_prompt), "--decode-tokens", str(n_decode)])
    return json.loads(out.strip().splitlines()[-1])


def realm_aggregate(model: str, backend: str, threads: int, sequences: int, n_decode: int) -> float:
    out = _realm(["bench", "--json", "--model", model, "--backend", backend, "--threads", str(threads),
                  "--concurrency", str(sequences), "--decode-tokens", str(n_decode)])
    return float(json.loads(out.strip().splitlines()[-1])[-1]["aggregate_tok_s"])


def _realm(args: list[str]) -> str:
    out = subprocess.run([REALM, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"realm {args[0]} failed: {(out.stderr.strip() or 'no output').splitlines()[-1]}")
    return out.stdout


def one_thread_count(args: argparse.Namespace, bin_dir: Path, model: str, threads: int) -> dict:
    """Every figure at `threads` threads, alternating Realm and llama.cpp, best of args.repeats."""
    ours: list[dict] = []
    theirs: list[dict] = []
    for _ in range(args.repeats):
        theirs.append({**llama_peer.bench(bin_dir, model, threads, args.prompt_tokens, args.decode_tokens),
                       "aggregate_tok_s": llama_peer.batched(bin_dir, model, threads, args.sequences,
                                                             args.aggregate_tokens)})
        ours.append({**realm_bench(model, args.backend, threads, args.prompt_tokens, args.decode_tokens),
                     "aggregate_tok_s": realm_aggregate(model, args.backend, threads, args.sequences,
                                                        args.aggregate_tokens)})
        print(f"bench_vs_llamacpp: {threads} thread(s): llama.cpp {theirs[-1]} realm {ours[-1]}", file=sys.stderr,
              flush=True)
    figures = ("prefill_tok_s", "decode_tok_s", "aggregate_tok_s")
    best_ours = {k: max(r[k] for r in ours) for k in figures}
    best_theirs = {k: max(r[k] for r in theirs) for k in figures}
    return {
        "threads": threads, "realm": best_ours, "llama_cpp": best_theirs,
        "ratios": {k.removesuffix("_tok_s"): round(best_ours[k] / best_theirs[k], 3) for k in figures},
        "realm_peak_rss_vs_file_plus_kv": max(r["rss_vs_file_plus_kv"] for r in ours),  # the worst run's
        "runs": {"realm": ours, "llama_cpp": theirs},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file (default: the bundled Gemma 3 270M)")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--sequences", type=int, default=16, help="requests at once for the aggregate figure")
    parser.add_argument("--aggregate-tokens", type=int, default=64, help="tokens each of them decodes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = str(resolve_model_path(args.model))
    bin_dir = llama_peer.peer_bin()
    results = [one_thread_count(args, bin_dir, model, int(t)) for t in args.threads.split(",")]
    print(json.dumps({"model": Path(model).name, "backend": args.backend, "peer": str(bin_dir),
                      "repeats": args.repeats, "by_threads": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
