"""The default model (real Gemma 3 270M Q4_K_M) against llama.cpp's reference prompts, on the NumPy
reference and on the cpu backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from oracle import DATA, compare

from realm.models import load_model

PROMPTS = json.loads((DATA / "gemma3-270m.prompts.json").read_text())


@pytest.fixture(scope="module", params=["numpy", "cpu"])
def model(request):
    return load_model(backend=request.param)


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_next_token_logits_match_llamacpp(model, index):
    prompt = PROMPTS[index]
    assert model.tokenizer.encode(prompt["prompt"]) == prompt["prompt_ids"]
    ours = model.logits_for(prompt["prompt_ids"])[-1]
    theirs = np.load(DATA / "gemma3-270m.logits.npz")[f"logits{index}"].astype(np.float32)
    got = compare(ours, theirs)
    assert got["min_cosine"] >= 0.99, got
    assert int(ours.argmax()) == prompt["top10"][0]


def test_greedy_continuation_equals_llamacpp(model):
    prompt = PROMPTS[0]
    seq = model.open_sequence(64)
    logits = seq.step(prompt["prompt_ids"])
    produced = []
    for _ in range(len(prompt["greedy_ids"])):
        produced.append(int(logits.argmax()))
        logits = seq.step([produced[-1]])
    assert produced == prompt["greedy_ids"]
    assert model.tokenizer.decode(produced).startswith(" Paris")
