"""The CPU forward passes against llama.cpp's logits on every tiny reference model: the NumPy reference
and the cpu backend (quantized GGUF blocks, native kernels) are held to the same fixtures and tolerances."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import DATA, assert_matches, reference_sequences, tiny_models, tolerance_for, weights_of

from host_functions.engine.model import Model, SequenceError

MODELS = tiny_models()


BACKENDS = ("numpy", "cpu")


@pytest.fixture(scope="module")
def models() -> dict[tuple[str, str], Model]:
    return {}


def _load(cache: dict[tuple[str, str], Model], name: str, backend: str = "numpy") -> Model:
    if (name, backend) not in cache:
        cache[(name, backend)] = Model.load(DATA / name, backend=backend)
    return cache[(name, backend)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,weights", MODELS, ids=[m[0] for m in MODELS])
def test_prefill_matches_llamacpp_at_every_position(models, name, weights, backend):
    model = _load(models, name, backend)
    assert model.backend.name == backend
    for tokens, expected in reference_sequences(name.replace(".gguf", ".logits.npz")):
        assert_matches(model.logits_for(tokens.tolist()), expected, tolerance_for(weights), name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["tiny-llama-Q4_K.gguf", "tiny-gemma3-Q8_0.gguf", "tiny-llama-Q5_1.gguf"])
def test_decode_through_kv_cache_matches_llamacpp(models, name, backend):
    """Prefill part of the sequence, then one token per step: the KV cache path."""
    model = _load(models, name, backend)
    tokens, expected = reference_sequences(name.replace(".gguf", ".logits.npz"))[0]
    seq = model.open_sequence(len(tokens))
    rows = [seq.step(tokens[:10].tolist())]
    rows += [seq.step([int(t)]) for t in tokens[10:]]
    assert_matches(np.stack(rows), expected[9:], tolerance_for(weights_of(name)), name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sliding_window_layers_attend_only_within_window(models, backend):
    """tiny-gemma3 has window 8: a 48-token sequence exercises positions far past it."""
    model = _load(models, "tiny-gemma3-F32.gguf", backend)
    assert model.config.layer_window(0) == 8 and model.config.layer_window(5) == 0
    tokens, expected = reference_sequences("tiny-gemma3-F32.logits.npz")[0]
    assert_matches(model.logits_for(tokens.tolist())[20:], expected[20:], tolerance_for("F32"))


def test_sequence_enforces_step_order_and_capacity(models):
    model = _load(models, "tiny-llama-F32.gguf")
    seq = model.open_sequence(4)
    with pytest.raises(SequenceError, match="no pending tokens"):
        seq.forward_layer(0)
    seq.append([1, 2])
    with pytest.raises(SequenceError, match="expected layer 0"):
        seq.forward_layer(1)
    seq.forward_layer(0)
    with pytest.raises(SequenceError, match="step incomplete"):
        seq.finish()
    with pytest.raises(SequenceError, match="while a step is in progress"):
        seq.append([3])
    seq.forward_layer(1)
    assert seq.finish().shape == (model.config.n_vocab,)
    with pytest.raises(SequenceError, match="capacity of 4 tokens exceeded"):
        seq.append([1, 2, 3])
    with pytest.raises(SequenceError, match="out of range"):
        seq.append([10**6])
    seq.close()
    with pytest.raises(SequenceError, match="closed"):
        seq.append([1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncate_rolls_back_to_an_earlier_state(models, backend):
    """Tokens fed and then truncated away leave no trace: the following steps give llama.cpp's logits."""
    model = _load(models, "tiny-llama-F32.gguf", backend)
    tokens, expected = reference_sequences("tiny-llama-F32.logits.npz")[0]
    seq = model.open_sequence(32)
    seq.step(tokens[:6].tolist())
    seq.step([300, 301, 302])  # tokens that are then rolled back
    seq.truncate(6)
    assert seq.tokens == tokens[:6].tolist()
    got = [seq.step([int(t)]) for t in tokens[6:12]]
    assert_matches(np.stack(got), expected[6:12], tolerance_for("F32"))

def test_the_cpu_backend_keeps_weights_quantized(models):
    """Resident weights are the file's blocks: the bytes a step reads are the quantized tensors'."""
    def weight_bytes(model: Model) -> int:
        return sum(p.nbytes for layer in model.backend.layers for p in layer.projections.values())

    quantized = weight_bytes(_load(models, "tiny-llama-Q4_K.gguf", "cpu"))
    assert quantized * 6 < weight_bytes(_load(models, "tiny-llama-Q4_K.gguf", "numpy"))  # 4.5 bits a weight vs 32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["tiny-gemma3-Q8_0.gguf", "tiny-llama-Q4_K.gguf"])
def test_a_tokens_logits_do_not_depend_on_how_its_sequence_was_cut_into_steps(models, name, backend):
    """One 40-token step, or steps of 1..9 tokens (a speculative verification is such a step): the same
    bits for every token, sliding windows included. Speculation's exactness rests on this."""
    model = _load(models, name, backend)
    tokens = reference_sequences(name.replace(".gguf", ".logits.npz"))[0][0][:40].tolist()
    whole = model.logits_for(tokens)
    seq, rows, at = model.open_sequence(len(tokens)), [], 0
    for size in [3, 1, 9, 2, 5, 1, 1, 8, 4, 6]:
        seq.append(tokens[at : at + size])
        for layer in range(model.config.n_layers):
            seq.forward_layer(layer)
        rows.append(seq.finish(all_positions=True))
        at += size
    seq.close()
    np.testing.assert_array_equal(np.concatenate(rows), whole)
