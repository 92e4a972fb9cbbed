#!/usr/bin/env python3
"""Decode and prefill speed of Realm against llama.cpp on the same GGUF file, in the same run.

    python scripts/bench_vs_llamacpp.py --llama-python /path/to/venv-with-llama-cpp-python/bin/python

llama.cpp runs through llama-cpp-python (it builds llama.cpp from source, so it lives in its own
venv, named by --llama-python). Both sides decode greedily over the same prompt; runs alternate and
the best of --repeats is kept, because this machine is shared and noisy; memory is the worst run's peak
RSS over the file plus the KV cache it used. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LLAMA_CPP_BENCH = r"""
import json, sys, time
import numpy as np
from llama_cpp import Llama
path, n_prompt, n_decode, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=n_prompt + n_decode + 8, n_threads=threads, n_batch=512, verbose=False)
text = "The history of computing is a story of abstraction. " * 64
prompt = llm.tokenize(text.encode())[:n_prompt]
start = time.perf_counter(); llm.eval(prompt); prefill = time.perf_counter() - start
start = time.perf_counter()
for _ in range(n_decode):
    llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
decode = time.perf_counter() - start
print(json.dumps({"prefill_tok_s": n_prompt / prefill, "decode_tok_s": n_decode / decode}))
"""


def llama_cpp(python: str, model: str, n_prompt: int, n_decode: int, threads: int) -> dict[str, float]:
    out = subprocess.run([python, "-c", LLAMA_CPP_BENCH, model, str(n_prompt), str(n_decode), str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def realm(model: str, backend: str, n_prompt: int, n_decode: int, threads: int) -> dict[str, float]:
    cmd = [str(Path(sys.executable).with_name("realm")), "bench", "--json", "--no-guest", "--model", model,
           "--backend", backend, "--threads", str(threads), "--prompt-tokens", str(n_prompt),
           "--decode-tokens", str(n_decode)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", required=True, help="a Python that can import llama_cpp")
    parser.add_argument("--model", help="GGUF file (default: the bundled Gemma 3 270M)")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from realm.models import resolve_model_path

    model = str(resolve_model_path(args.model))
    ours, theirs = [], []
    for _ in range(args.repeats):
        theirs.append(llama_cpp(args.llama_python, model, args.prompt_tokens, args.decode_tokens, args.threads))
        ours.append(realm(model, args.backend, args.prompt_tokens, args.decode_tokens, args.threads))
    best = {k: max(r[k] for r in ours) for k in ("prefill_tok_s", "decode_tok_s")}
    best_ll = {k: max(r[k] for r in theirs) for k in ("prefill_tok_s", "decode_tok_s")}
    print(json.dumps({
        "realm": {**ours[-1], **best}, "llama_cpp": best_ll,
        "decode_ratio": best["decode_tok_s"] / best_ll["decode_tok_s"],
        "prefill_ratio": best["prefill_tok_s"] / best_ll["prefill_tok_s"],
        "peak_rss_vs_file_plus_kv": max(r["rss_vs_file_plus_kv"] for r in ours),  # the worst run's
        "runs": {"realm": ours, "llama_cpp": theirs},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
