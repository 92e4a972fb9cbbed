"""Direct generation: greedy equals llama.cpp, seeds reproduce, stop strings and limits hold."""

from __future__ import annotations

import json

import pytest
from oracle import DATA

from host_functions.engine.generation import generate_text, generate_tokens
from host_functions.engine.model import Model
from host_functions.engine.sampling import SamplingParams
from host_functions.errors import ContextLengthExceeded
from realm.models import load_model


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model.load(DATA / "tiny-gemma3-Q8_0.gguf")


def test_greedy_text_on_the_real_model_equals_llamacpp():
    prompt = json.loads((DATA / "gemma3-270m.prompts.json").read_text())[1]
    text = "".join(generate_text(load_model(backend="numpy"), prompt["prompt"],
                                 SamplingParams(temperature=0, max_tokens=12)))
    assert prompt["greedy_text"].startswith(text) and len(text) > 20


def test_same_seed_same_text_different_seed_different_text():
    model = load_model(backend="numpy")

    def run(seed: int) -> str:
        return "".join(generate_text(model, "Once upon a time", SamplingParams(temperature=1.0, seed=seed,
                                                                               max_tokens=16)))
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_max_tokens_is_exact_when_no_end_token(tiny):
    longer = list(generate_tokens(tiny, [1, 40], SamplingParams(temperature=0, max_tokens=12)))
    assert len(longer) == 12, "precondition: greedy decoding from [1, 40] meets no end token in 12 tokens"
    produced = list(generate_tokens(tiny, [1, 40], SamplingParams(temperature=0, max_tokens=5)))
    assert produced == longer[:5]


def test_generation_fills_the_context_and_stops_there(tiny):
    prompt = [1] + list(range(40, 47))  # 8 tokens in a context of 10: the logits after 10 give one more
    produced = list(generate_tokens(tiny, prompt, SamplingParams(temperature=0, max_tokens=50), n_ctx=10))
    assert not any(tiny.tokenizer.is_end_of_generation(t) for t in produced)
    assert len(produced) == 10 - len(prompt) + 1


def test_a_prompt_longer_than_the_context_is_refused_not_cut(tiny):
    with pytest.raises(ContextLengthExceeded, match="the prompt is 12 tokens, longer than the context of 10"):
        list(generate_tokens(tiny, [1] * 12, SamplingParams(temperature=0), n_ctx=10))
    too_long = [1] * (tiny.config.context_length + 1)
    with pytest.raises(ContextLengthExceeded, match=f"context of {tiny.config.context_length}"):
        list(generate_tokens(tiny, too_long, SamplingParams(temperature=0)))


def test_stop_string_ends_the_text_before_it(tiny):
    full = "".join(generate_text(tiny, "ab", SamplingParams(temperature=0, max_tokens=30)))
    assert len(full) > 4
    stop = full[2:4]
    cut = "".join(generate_text(tiny, "ab", SamplingParams(temperature=0, max_tokens=30, stop=(stop,))))
    assert cut == full[: full.index(stop)]


def test_invalid_parameters_are_rejected(tiny):
    with pytest.raises(Exception, match="top_p"):
        list(generate_tokens(tiny, [1], SamplingParams(top_p=2.0)))
