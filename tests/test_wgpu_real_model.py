"""The real Gemma 3 270M Q4_K_M on the wgpu backend against llama.cpp's next-token logits.

On llvmpipe (2 CPU cores) the prefill of the 13-token prompt takes about 10-16 s, most of it in the
quantized matmuls; the tied 262144 x 640 Q8_0 output matrix (178 MB) exceeds llvmpipe's 128 MiB
binding limit and runs as several row parts.
"""

from __future__ import annotations

import json

import numpy as np
from oracle import DATA, compare

from realm.models import load_model

PROMPT = json.loads((DATA / "gemma3-270m.prompts.json").read_text())[0]


def test_capital_of_france_next_token_logits_match_llamacpp():
    assert PROMPT["prompt"] == "Question: What is the capital of France?\nAnswer:"
    model = load_model(backend="wgpu")
    backend = model.backend
    assert backend.name == "wgpu"
    if backend.output.nbytes > backend.ctx.max_binding_size:
        assert len(backend.output.parts) > 1
    logits = model.open_sequence(64).step(PROMPT["prompt_ids"])
    theirs = np.load(DATA / "gemma3-270m.logits.npz")["logits0"].astype(np.float32)
    got = compare(logits, theirs)
    assert got["min_cosine"] >= 0.99, got
    assert int(logits.argmax()) == PROMPT["top10"][0] == 9079  # " Paris"
