"""llama.cpp's own native tools, the peer Realm's speed is measured against: found or built, and run.

`llama-bench`, `llama-batched-bench` and `llama-server` built from the llama.cpp inside the
llama-cpp-python 0.3.36 source distribution (the llama.cpp of the reference fixtures) by
scripts/setup_peer.sh. Not llama-cpp-python itself: its Python loop copies the 262144 logits of every
token into Python and samples there, about half of each token on Gemma, so it measured llama.cpp at
half its speed. `$PEER_BIN` names a built bin/ folder; without it the tools are built (about 15
minutes on 2 cores, once) under .peer/ in the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("llama-bench", "llama-batched-bench", "llama-server")


def peer_bin() -> Path:
    """$PEER_BIN, else the tools built (once) by setup_peer.sh under .peer/. SystemExit if that fails."""
    configured = os.environ.get("PEER_BIN")
    if configured:
        path = Path(configured)
    else:
        peer = ROOT / ".peer"
        path = peer / "llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"
        if not all((path / t).is_file() for t in TOOLS):
            print(f"building llama.cpp's native tools into {peer} (once, about 15 minutes)", flush=True)
            subprocess.run(["bash", str(ROOT / "scripts/setup_peer.sh"), str(peer)], check=True)
    missing = [t for t in TOOLS if not (path / t).is_file()]
    if missing:
        raise SystemExit(f"llama.cpp's {', '.join(missing)} not found in {path} (PEER_BIN)")
    return path


def bench(bin_dir: Path, model: str, threads: int, n_prompt: int, n_decode: int) -> dict[str, float]:
    """llama-bench, one repetition: prefill (pp n_prompt) and decode (tg n_decode) tok/s."""
    out = _run([str(bin_dir / "llama-bench"), "-m", model, "-t", str(threads), "-p", str(n_prompt),
                "-n", str(n_decode), "-r", "1", "-o", "json"])
    rows = json.loads(out)
    return {"prefill_tok_s": next(r["avg_ts"] for r in rows if r["n_prompt"] > 0),
            "decode_tok_s": next(r["avg_ts"] for r in rows if r["n_gen"] > 0)}


def batched(bin_dir: Path, model: str, threads: int, sequences: int, n_decode: int) -> float:
    """llama-batched-bench: aggregate decode tok/s of `sequences` sequences of 16-token prompts."""
    out = _run([str(bin_dir / "llama-batched-bench"), "-m", model, "-t", str(threads), "-c", "8192", "-b", "2048",
                "-ub", "512", "-npp", "16", "-ntg", str(n_decode), "-npl", str(sequences), "--output-format", "jsonl"])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return float(rows[-1]["speed_tg"])


def server_command(bin_dir: Path, model: str, port: int, slots: int, threads: int, ctx_per_slot: int) -> list[str]:
    """llama-server on loopback with `slots` slots (continuous batching), no web UI."""
    return [str(bin_dir / "llama-server"), "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "-np", str(slots), "-c", str(slots * ctx_per_slot), "-t", str(threads), "-cb", "--no-webui"]


def _run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{Path(cmd[0]).name} failed: {(out.stderr.strip() or 'no output').splitlines()[-1]}")
    return out.stdout
