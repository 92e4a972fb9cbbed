"""Batch invariance on the NumPy backend (and the cpu backend built on it): a sequence's logits are
bit-identical whether its step runs alone or batched with any number of other sequences (ragged
lengths, decode and prefill rows mixed, sliding-window layers), and a batched step still matches
llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import DATA, assert_matches, reference_sequences, tolerance_for

from host_functions.backends import numpy_backend
from host_functions.backends.base import StepItem
from host_functions.engine.model import Model

# tiny-gemma3: 5 sliding-window layers (window 8) and one global; tiny-llama: all global, Q4_K weights.
MODELS = ["tiny-gemma3-F32.gguf", "tiny-llama-Q4_K.gguf"]


def _case(rng: np.random.Generator, n_vocab: int) -> tuple[list[int], list[int]]:
    """(prefix already in the cache, new tokens of the step): ragged, past the sliding window."""
    prefix = rng.integers(1, n_vocab, size=int(rng.integers(0, 40))).tolist()
    new = rng.integers(1, n_vocab, size=1 if rng.random() < 0.7 else int(rng.integers(2, 9))).tolist()
    return prefix, new


def _prepared(model: Model, prefix: list[int]):
    seq = model.open_sequence(128)
    if prefix:
        seq.step(prefix)
    return seq


def _prepared_items(model, cases):
    """A prepared sequence per (prefix, new tokens) case and a step item of its new tokens, room reserved.
    A step rewrites its positions pos.. with the same values each time, so one prepared cache per case
    serves a solo run and every batch (the sequence's committed tokens never change here)."""
    seqs = [_prepared(model, prefix) for prefix, _ in cases]
    items = [StepItem(np.asarray(new, np.int32), len(prefix), seq._cache, "all")
             for (prefix, new), seq in zip(cases, seqs, strict=True)]
    for item in items:
        item.cache.reserve(item.pos + len(item.tokens))
    return seqs, items


@pytest.mark.parametrize("backend", ["numpy", "cpu"])  # cpu: its native norms, rope and activations too
@pytest.mark.parametrize("name", MODELS)
def test_batched_logits_are_bit_identical_to_solo_for_batch_sizes_1_to_32(name, backend):
    model = Model.load(DATA / name, backend=backend, kv_memory=64 << 20)
    rng = np.random.default_rng(7)
    cases = [_case(rng, model.config.n_vocab) for _ in range(32)]
    seqs, items = _prepared_items(model, cases)
    solo = [model.backend.step([item])[0] for item in items]
    for batch_size in range(1, 33):
        picked = rng.permutation(32)[:batch_size]  # different companions and places each time
        for i, logits in zip(picked, model.backend.step([items[i] for i in picked]), strict=True):
            assert np.array_equal(logits, solo[i]), f"case {i} differs in a batch of {batch_size}"
    for seq in seqs:
        seq.close()
    assert model.backend.kv_pool.stats().blocks_used == 0


@pytest.mark.parametrize("name", MODELS + ["tiny-gemma3-Q4_K.gguf"])
def test_cpu_blocks_in_one_native_call_give_the_bits_of_the_op_by_op_hooks(name):
    """layer.c runs a whole block per call; the same ragged batch (decode and prefill rows, windows)
    op by op through NumpyBackend's _layer and the cpu hooks gives the same bits."""
    model = Model.load(DATA / name, backend="cpu", kv_memory=64 << 20)
    rng = np.random.default_rng(11)
    cases = [_case(rng, model.config.n_vocab) for _ in range(12)]
    seqs, items = _prepared_items(model, cases)
    assert all(model.backend._native_layer(i) is not None for i in range(model.config.n_layers))  # layer.c runs
    native = model.backend.step(items)
    model.backend.native_blocks = False
    for ours, hooks in zip(native, model.backend.step(items), strict=True):
        assert np.array_equal(ours, hooks)
    for seq in seqs:
        seq.close()


def test_only_wanted_logits_come_back():
    model = Model.load(DATA / MODELS[0])
    seqs = [model.open_sequence(64) for _ in range(3)]
    items = [StepItem(np.arange(1, 6, dtype=np.int32), 0, s._cache, wants)
             for s, wants in zip(seqs, ("none", "last", "all"), strict=True)]
    for item in items:
        item.cache.reserve(5)
    none, last, every = model.backend.step(items)
    assert none is None and last.shape == (model.config.n_vocab,) and every.shape == (5, model.config.n_vocab)
    assert np.array_equal(last, every[-1])


@pytest.mark.parametrize("name,weights", [("tiny-gemma3-F32.gguf", "F32"), ("tiny-llama-Q4_K.gguf", "Q4_K")])
def test_batched_prefill_matches_llamacpp(name, weights):
    model = Model.load(DATA / name)
    refs = reference_sequences(name.replace(".gguf", ".logits.npz"))
    seqs = [model.open_sequence(len(tokens)) for tokens, _ in refs]
    items = [StepItem(tokens.astype(np.int32), 0, s._cache, "all") for (tokens, _), s in zip(refs, seqs, strict=True)]
    for item in items:
        item.cache.reserve(len(item.tokens))
    for logits, (_, expected) in zip(model.backend.step(items), refs, strict=True):
        assert_matches(logits, expected, tolerance_for(weights), name)



@pytest.mark.parametrize("matmul", [numpy_backend.tiled_matmul, numpy_backend.blas_rowwise_matmul],
                         ids=["native", "blas-fallback"])
@pytest.mark.parametrize("n_in", [64, 100, 640])  # 100: past the last whole 16 lanes
def test_each_product_row_is_independent_of_the_others(matmul, n_in):
    rng = np.random.default_rng(n_in)
    weight = rng.standard_normal((300, n_in), dtype=np.float32)
    x = rng.standard_normal((37, n_in), dtype=np.float32)
    batched = matmul(x, weight)
    np.testing.assert_allclose(batched, x.astype(np.float64) @ weight.T.astype(np.float64), rtol=1e-4, atol=1e-4)
    for i in (0, 5, 36):
        assert np.array_equal(matmul(x[i : i + 1], weight)[0], batched[i])
    for start in range(1, 17):  # every row at every place of a 16-row block
        assert np.array_equal(matmul(x[start : start + 17], weight), batched[start : start + 17]), start


def test_numpy_backend_products_run_on_the_native_float_tile():
    # Where the kernels build (every CI machine) the reference backend must not fall back to BLAS tiles.
    assert numpy_backend.float_kernels() is not None
