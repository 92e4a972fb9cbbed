"""qwen2, qwen3, Llama 3.1 and phi3 against llama.cpp's logits on the numpy, cpu and wgpu backends.

The tiny-archs fixtures (tests/data/tiny-archs, a subset of the reference's formats) pin down what
each architecture does differently (tests/data/REFERENCE.md): qwen2's Q/K/V biases, qwen3's per-head
Q/K norms and key_length heads, Llama 3.1's rope_freqs, phi3's fused matrices, LongRoPE factors chosen
by the context the sequence is set up for (`seq0_ctx8192`: n_ctx 8192, the long factors) and
attn_factor. Every position of every sequence is held to the README's tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from oracle import ARCHS, arch_models, arch_sequences, arch_tolerance, assert_matches

from host_functions.backends.base import StepItem
from host_functions.engine.model import Model

MODELS = arch_models()
BACKENDS = ("numpy", "cpu", "wgpu")
ONE_PER_ARCH = ["tiny-qwen2-Q4_K.gguf", "tiny-qwen3-F16.gguf", "tiny-llama3-Q4_K.gguf", "tiny-phi3-Q8_0.gguf"]


@pytest.fixture(scope="module")
def models() -> dict[tuple[str, str], Model]:
    return {}


def _load(cache: dict[tuple[str, str], Model], name: str, backend: str) -> Model:
    if (name, backend) not in cache:
        cache[(name, backend)] = Model.load(ARCHS / name, backend=backend)
    return cache[(name, backend)]


def test_the_fixtures_cover_every_architecture_and_format():
    names = [name for name, _ in MODELS]
    assert {name.split("-")[1] for name in names} == {"qwen2", "qwen3", "llama3", "phi3"}
    assert {weights for _, weights in MODELS} == {"F32", "F16", "Q8_0", "Q6_K", "Q5_0", "Q4_K"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,weights", MODELS, ids=[m[0] for m in MODELS])
def test_prefill_matches_llamacpp_at_every_position(models, name, weights, backend):
    model = _load(models, name, backend)
    for seq in arch_sequences(name):
        ours = model.logits_for(seq.tokens.tolist(), n_ctx=seq.n_ctx)
        assert_matches(ours, seq.logits, arch_tolerance(name, weights), f"{name} {seq.key} on {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ONE_PER_ARCH)
def test_decode_through_the_kv_cache_matches_llamacpp(models, name, backend):
    """Prefill part of each sequence, then one token per step (phi3 also set up for 8192 positions)."""
    model = _load(models, name, backend)
    weights = name.removesuffix(".gguf").rsplit("-", 1)[1]
    for ref in arch_sequences(name):
        seq = model.open_sequence(ref.n_ctx)
        rows = [seq.step(ref.tokens[:10].tolist())] + [seq.step([int(t)]) for t in ref.tokens[10:]]
        seq.close()
        assert_matches(np.stack(rows), ref.logits[9:], arch_tolerance(name, weights), f"{name} {ref.key}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_step_gives_each_sequence_the_rope_factors_of_its_own_context(models, backend):
    """Two phi3 sequences of one batched step, set up for 48 and 8192 positions: the short and the long
    LongRoPE factors, each row its own (llama.cpp's logits differ by far between the two)."""
    model = _load(models, "tiny-phi3-F16.gguf", backend)
    by_key = {seq.key: seq for seq in arch_sequences("tiny-phi3-F16.gguf")}
    short, long = by_key["seq0"], by_key["seq0_ctx8192"]
    assert (short.n_ctx, long.n_ctx) == (512, 8192)
    items = [StepItem(short.tokens.astype(np.int32), 0, model.backend.new_cache(n_ctx), "all")
             for n_ctx in (len(short.tokens), long.n_ctx, 512)]
    with model.backend.step_lock:
        for item in items:
            item.cache.reserve(len(short.tokens))
        got = model.backend.step(items)
    tol = arch_tolerance("tiny-phi3-F16.gguf", "F16")
    assert_matches(got[0], short.logits, tol, "short context")
    assert_matches(got[1], long.logits, tol, "long context")
    np.testing.assert_array_equal(got[0], got[2])  # both short: one factor set, whatever the capacity
    assert not np.allclose(got[0], got[1], rtol=0.05)
    for item in items:
        item.cache.free()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["tiny-qwen2-F16.gguf", "tiny-phi3-F16.gguf"])
def test_verifying_drafts_in_one_step_gives_the_bits_of_one_token_per_step(models, name, backend):
    """Speculative decoding's exactness: k drafted tokens checked in one step give the same logits, bit
    for bit, as decoding them one per step (biases, fused matrices and LongRoPE included)."""
    model = _load(models, name, backend)
    ref = arch_sequences(name)[-1]
    prompt, drafts = ref.tokens[:12].tolist(), ref.tokens[12:18].tolist()
    one_by_one = model.open_sequence(ref.n_ctx)
    rows = [one_by_one.step(prompt)] + [one_by_one.step([t]) for t in drafts[:-1]]
    verified = model.open_sequence(ref.n_ctx)
    verified.step(prompt[:-1])
    verified.append([prompt[-1], *drafts[:-1]])
    for layer in range(model.config.n_layers):
        verified.forward_layer(layer)
    np.testing.assert_array_equal(verified.finish(all_positions=True), np.stack(rows))
    one_by_one.close()
    verified.close()


def test_the_configs_read_what_each_architecture_differs_in(models):
    qwen2, qwen3, llama3, phi3 = (_load(models, name, "numpy").config for name in ONE_PER_ARCH)
    assert qwen2.layout.biases == ("attn_q", "attn_k", "attn_v") and not qwen2.tied_output
    assert qwen3.head_dim == 64 != qwen3.n_embd // qwen3.n_head and qwen3.qk_norm and qwen3.tied_output
    assert llama3.rope_factor_sets == ("rope_freqs.weight",) and llama3.rope_factors(10**6) == "rope_freqs.weight"
    assert [m.holds for m in phi3.layout.matrices if len(m.holds) > 1] == [("q", "k", "v"), ("gate", "up")]
    assert phi3.rope_factors(4096) == "rope_factors_short.weight"
    assert phi3.rope_factors(4097) == "rope_factors_long.weight"
    assert phi3.rope_attn_factor == pytest.approx(1.1902381)
    assert phi3.layer_window(0) == 0  # the file's sliding window of 16 is ignored, as llama.cpp does
    assert {c.rope_layout for c in (qwen2, qwen3, phi3)} == {"neox"} and llama3.rope_layout == "interleaved"
