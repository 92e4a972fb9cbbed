"""The cpu backend's forward pass against llama.cpp's logits on every tiny reference model.

Same fixtures and tolerances as the NumPy reference (test_forward_numpy.py); the cpu backend keeps the
weights as their GGUF blocks and rounds activations as llama.cpp does, so it is held to the same marks.
"""

from __future__ import annotations

import numpy as np
import pytest

from host_functions.backends.cpu_backend import CpuBackend
from host_functions.model import Model
from oracle import DATA, assert_matches, reference_sequences, tiny_models, tolerance_for

MODELS = tiny_models()


@pytest.fixture(scope="module")
def models() -> dict[str, Model]:
    return {}


def _load(cache: dict[str, Model], name: str) -> Model:
    if name not in cache:
        cache[name] = Model.load(DATA / name, backend="cpu")
    return cache[name]


@pytest.mark.parametrize("name,weights", MODELS, ids=[m[0] for m in MODELS])
def test_prefill_matches_llamacpp_at_every_position(models, name, weights):
    model = _load(models, name)
    assert isinstance(model.backend, CpuBackend)
    for tokens, expected in reference_sequences(name.replace(".gguf", ".logits.npz")):
        assert_matches(model.logits_for(tokens.tolist()), expected, tolerance_for(weights), name)


@pytest.mark.parametrize("name", ["tiny-llama-Q4_K.gguf", "tiny-gemma3-Q8_0.gguf", "tiny-llama-Q5_1.gguf"])
def test_decode_through_kv_cache_matches_llamacpp(models, name):
    model = _load(models, name)
    tokens, expected = reference_sequences(name.replace(".gguf", ".logits.npz"))[0]
    seq = model.open_sequence(len(tokens))
    rows = [seq.step(tokens[:10].tolist())]
    rows += [seq.step([int(t)]) for t in tokens[10:]]
    assert_matches(np.stack(rows), expected[9:], tolerance_for("Q4_K"), name)


def test_weights_stay_quantized(models):
    """Resident weights are the file's blocks: the bytes a step reads equal the quantized tensors'."""
    model = _load(models, "tiny-llama-Q4_K.gguf")
    backend = model.backend
    quantized = sum(layer[key].nbytes for layer in backend.layers for key in ("qkv", "gate_up", "attn_output",
                                                                            "ffn_down"))
    numpy_model = Model.load(DATA / "tiny-llama-Q4_K.gguf", backend="numpy")
    floats = sum(layer[key].nbytes for layer in numpy_model.backend.layers for key in ("qkv", "gate_up",
                                                                                     "attn_output", "ffn_down"))
    assert quantized * 6 < floats  # Q4_K: 4.5 bits a weight against 32
