"""The wgpu backend's whole forward pass against llama.cpp's logits on every tiny reference model.

Each sequence runs as one prefill with last_only=False, so every position is compared, with the
README's tolerances for the model's weight format (tests/oracle.py).
"""

from __future__ import annotations

import pytest
from oracle import DATA, assert_matches, reference_sequences, tiny_models, tolerance_for

from host_functions.engine.model import Model

MODELS = tiny_models()


@pytest.mark.parametrize("name,weights", MODELS, ids=[m[0] for m in MODELS])
def test_prefill_matches_llamacpp_at_every_position(name, weights):
    model = Model.load(DATA / name, backend="wgpu")
    assert model.backend.name == "wgpu"
    for tokens, expected in reference_sequences(name.replace(".gguf", ".logits.npz")):
        assert_matches(model.logits_for(tokens.tolist()), expected, tolerance_for(weights), name)
