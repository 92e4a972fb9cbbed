"""Embeddings: the engine's final hidden states, pooled as llama.cpp's server pools them, against
llama.cpp's own vectors (tests/data/tiny-llama-F32.embeddings.json, from scripts/embedding_oracle.py),
on every backend and whatever else shares the step; and the /v1/embeddings body checks.
"""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
from guest_helpers import TINY_LLAMA
from oracle import DATA

from host_functions.engine.model import Model
from realm.server.embeddings import MAX_INPUTS, parse_embeddings, pool, response
from realm.server.protocol import ApiError, RequestLimits

ORACLE = json.loads((DATA / "tiny-llama-F32.embeddings.json").read_text())
LIMITS = RequestLimits(n_ctx=64, max_request_tokens=100, default_max_tokens=16, max_prompt_tokens=64, n_vocab=320)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "wgpu"])
def test_pooled_hidden_states_are_llama_cpps_embeddings(backend):
    model = Model.load(TINY_LLAMA, backend=backend)
    assert ORACLE["pooling"] == "mean" and ORACLE["normalize"] == "euclidean"
    for tokens, theirs in zip(ORACLE["inputs"], ORACLE["embeddings"], strict=True):
        states = model.hidden_states(tokens)
        assert states.shape == (len(tokens), model.config.n_embd)
        ours = pool(states)
        assert abs(float(np.linalg.norm(ours)) - 1) < 1e-5
        assert float(ours @ np.asarray(theirs)) > 0.9999, backend
        assert np.abs(ours - np.asarray(theirs)).max() < 1e-3


def test_hidden_states_do_not_depend_on_the_steps_they_share():
    model = Model.load(TINY_LLAMA, backend="numpy", batched=True)
    tokens = ORACLE["inputs"][1]
    alone = model.hidden_states(tokens)
    neighbour = model.open_sequence(64)
    neighbour.step(ORACLE["inputs"][0][:8])
    stop = threading.Event()

    def decode() -> None:
        while not stop.is_set():
            neighbour.step([5])
            neighbour.truncate(8)

    thread = threading.Thread(target=decode)
    thread.start()
    try:
        together = [model.hidden_states(tokens) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
        neighbour.close()
    assert all(np.array_equal(alone, other) for other in together)
    assert model.scheduler is not None and model.scheduler.stats.max_batch > 1


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model.load(TINY_LLAMA, backend="numpy")


def test_inputs_in_every_openai_form_become_token_lists_with_bos(tiny):
    tok = tiny.tokenizer
    spec = parse_embeddings({"model": "m", "input": "Once upon"}, "m", tok, LIMITS, 256)
    assert spec.inputs == (tuple(tok.encode("Once upon")),) and spec.encoding == "float"
    spec = parse_embeddings({"model": "m", "input": ["a", [1, 5, 7]], "encoding_format": "base64"}, "m", tok,
                            LIMITS, 256)
    assert spec.inputs == (tuple(tok.encode("a")), (1, 5, 7)) and spec.most_tokens() == len(tok.encode("a")) + 3
    assert parse_embeddings({"model": "m", "input": [3, 4]}, "m", tok, LIMITS, 256).inputs == ((3, 4),)
    vector = np.array([0.6, 0.8], np.float32)
    encoded = response(spec, "m", [vector, vector])["data"][1]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(encoded), "<f4"), vector)


@pytest.mark.parametrize("body, match", [
    ({"input": ""}, "empty string"),
    ({"input": []}, "input must be"),
    ({"input": [[]]}, "empty list of tokens"),
    ({"input": [1.5]}, "input must be"),
    ({"input": [True]}, "input must be"),
    ({"input": {"text": "a"}}, "input must be"),
    ({"input": [320]}, "outside this model's vocabulary"),
    ({"input": [[1] * 65]}, "over the 64 of this model's maximum context length"),
    ({"input": [[1] * 60, [1] * 60]}, "121|120 tokens in all, over the 100"),
    ({"input": ["a"] * (MAX_INPUTS + 1)}, f"at most {MAX_INPUTS} inputs"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "dimensions": 64}, "256 dimensions"),
    ({"input": "a", "model": ""}, "model is required"),
])
def test_bad_embedding_requests_are_400_naming_the_field(body, match, tiny):
    with pytest.raises(ApiError, match=match) as caught:
        parse_embeddings({"model": "m", **body}, "m", tiny.tokenizer, LIMITS, 256)
    assert caught.value.status == 400


def test_another_model_is_404(tiny):
    with pytest.raises(ApiError) as caught:
        parse_embeddings({"model": "x", "input": "a"}, "m", tiny.tokenizer, LIMITS, 256)
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
