"""The wgpu backend's KV cache path, step protocol and weight residency (llama.cpp's logits as the oracle).

The prefill of every tiny model against llama.cpp is in test_wgpu_forward.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from oracle import DATA, assert_matches, compare, reference_sequences, tolerance_for, weights_of

from host_functions.arch.config import ModelConfig
from host_functions.backends.base import StepItem
from host_functions.backends.wgpu.backend import GPUActivations, WgpuBackend
from host_functions.backends.wgpu.weight_kernels import GPUWeight
from host_functions.engine.model import Model
from host_functions.errors import BackendError
from host_functions.formats import quants
from host_functions.formats.gguf_file import GGUFFile


@pytest.fixture(scope="module")
def models() -> dict[tuple[str, bool], Model]:
    return {}


def load(cache: dict, name: str, kv_f16: bool = True) -> Model:
    """A tiny model on the wgpu backend; Model.load gives the default f16 KV cache, f32 is built here."""
    if (name, kv_f16) not in cache:
        model = Model.load(DATA / name, backend="wgpu")
        if not kv_f16:
            model.backend = WgpuBackend(model.config, GGUFFile(DATA / name).tensors, kv_f16=False)
            model.backend.configure_kv()
        cache[name, kv_f16] = model
    return cache[name, kv_f16]


@pytest.mark.parametrize("name,kv_f16", [("tiny-gemma3-Q8_0.gguf", True), ("tiny-llama-Q4_K.gguf", False)])
def test_decode_through_gpu_kv_cache_matches_llamacpp(models, name, kv_f16):
    """Prefill 10 tokens, then one token per step: the cache grows (16 -> 32 -> 48 positions) on the
    way, and gemma3's window-8 layers slide past their first positions."""
    model = load(models, name, kv_f16)
    tokens, expected = reference_sequences(name.replace(".gguf", ".logits.npz"))[0]
    seq = model.open_sequence(len(tokens))
    rows = [seq.step(tokens[:10].tolist())]
    rows += [seq.step([int(t)]) for t in tokens[10:]]
    assert_matches(np.stack(rows), expected[9:], tolerance_for(weights_of(name)), f"{name} kv_f16={kv_f16}")


def test_prefill_continued_at_a_later_position_matches_llamacpp(models):
    """Prefill in three chunks (n_tokens > 1 at pos > 0), reading every position's logits."""
    model = load(models, "tiny-llama-F16.gguf")
    backend = model.backend
    tokens, expected = reference_sequences("tiny-llama-F16.logits.npz")[0]
    cache = backend.new_cache(len(tokens))
    rows = []
    for start, stop in [(0, 5), (5, 30), (30, 48)]:
        x = backend.embed(tokens[start:stop].astype(np.int32))
        for i in range(model.config.n_layers):
            x = backend.layer(i, x, cache, start)
        rows.append(backend.logits(x, last_only=False))
    assert_matches(np.concatenate(rows), expected, tolerance_for("F16"))


def test_logits_last_only_is_the_last_row_of_all_positions(models):
    backend = load(models, "tiny-gemma3-Q4_K.gguf").backend
    tokens = np.array([2, 100, 7, 250, 31], np.int32)
    rows = []
    for last_only in (False, True):
        cache = backend.new_cache(8)
        x = backend.embed(tokens)
        for i in range(backend.config.n_layers):
            x = backend.layer(i, x, cache, 0)
        rows.append(backend.logits(x, last_only=last_only))
    assert rows[0].shape == (5, 320) and rows[1].shape == (1, 320)
    np.testing.assert_allclose(rows[1][0], rows[0][-1], rtol=1e-5, atol=1e-5)


def test_truncate_rolls_back_to_an_earlier_state(models):
    model = load(models, "tiny-llama-Q8_0.gguf")
    tokens, expected = reference_sequences("tiny-llama-Q8_0.logits.npz")[0]
    seq = model.open_sequence(32)
    seq.step(tokens[:6].tolist())
    seq.step([300, 301, 302])  # tokens that are then rolled back
    seq.truncate(6)
    got = [seq.step([int(t)]) for t in tokens[6:12]]
    assert_matches(np.stack(got), expected[6:12], tolerance_for("Q8_0"))


def test_weights_are_uploaded_as_raw_gguf_bytes_and_never_dequantized_on_the_cpu(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a weight was dequantized on the CPU")

    monkeypatch.setattr(quants, "dequantize", refuse)
    for qtype, fmt in list(quants.QUANT_FORMATS.items()):
        monkeypatch.setitem(quants.QUANT_FORMATS, qtype, dataclasses.replace(fmt, dequantize_blocks=refuse))
    gguf = GGUFFile(DATA / "tiny-gemma3-Q6_K.gguf")
    config = ModelConfig.from_gguf(gguf)
    backend = WgpuBackend(config, gguf.tensors)
    cache = backend.new_cache(4)
    x = backend.embed(np.array([2, 40, 41], np.int32))
    for i in range(config.n_layers):
        x = backend.layer(i, x, cache, 0)
    assert np.isfinite(backend.logits(x)).all()

    matrices = {"token_embd.weight": backend.token_embd,
                "blk.3.attn_v.weight": backend.layers[3].weights["v"],
                "blk.5.ffn_down.weight": backend.layers[5].weights["down"]}
    for name, weight in matrices.items():
        assert isinstance(weight, GPUWeight) and weight.fmt.name == "Q6_K"
        raw = gguf.tensors[name].raw_bytes().reshape(weight.n_rows, weight.row_bytes)
        for part in weight.parts:
            on_gpu = backend.ctx.read(part.buffer, np.uint8, (part.n_rows * weight.row_bytes,))
            np.testing.assert_array_equal(on_gpu, raw[part.row_start : part.row_start + part.n_rows].reshape(-1))
    norm = backend.ctx.read(backend.layers[0].norms["attn_q_norm"], np.float32, (config.head_dim,))
    np.testing.assert_array_equal(norm, gguf.tensors["blk.0.attn_q_norm.weight"].data)


def test_kv_cache_is_a_gpu_pool_of_blocks_bounded_by_capacity(models):
    backend = load(models, "tiny-llama-F32.gguf").backend
    pool = backend.kv_pool
    block_layer_bytes = pool.block_tokens * backend.config.kv_dim * 2  # f16
    assert all(buf.size == pool.n_blocks * block_layer_bytes for buf in backend._kv_k + backend._kv_v)
    held = pool.stats().blocks_used
    cache = backend.new_cache(20)
    x = backend.embed(np.arange(1, 19, dtype=np.int32))
    assert isinstance(x, GPUActivations) and x.n_tokens == 18
    x = backend.layer(0, x, cache, 0)
    assert len(cache.blocks) == 2 and pool.stats().blocks_used == held + 2  # 18 positions: two 16-token blocks
    with pytest.raises(BackendError, match="capacity of 20 positions exceeded"):
        backend.layer(1, backend.embed(np.arange(1, 4, dtype=np.int32)), cache, 18)
    backend.logits(x)  # flush the recorded work so later tests start from a clean encoder
    cache.free()
    assert pool.stats().blocks_used == held


def test_out_of_range_token_ids_are_rejected(models):
    backend = load(models, "tiny-llama-F32.gguf").backend
    with pytest.raises(BackendError, match="out of range"):
        backend.embed(np.array([5, 320], np.int32))


def test_f32_kv_cache_option_doubles_cache_memory_and_still_matches_llamacpp(models):
    f16 = load(models, "tiny-llama-F32.gguf").backend
    f32 = load(models, "tiny-llama-F32.gguf", kv_f16=False).backend
    assert f16.kv_pool.block_bytes * 2 == f32.kv_pool.block_bytes
    tokens, expected = reference_sequences("tiny-llama-F32.logits.npz")[1]
    got = load(models, "tiny-llama-F32.gguf", kv_f16=False).logits_for(tokens.tolist())
    assert compare(got, expected)["min_cosine"] >= 0.99999


def test_a_truncated_or_closed_sequence_leaves_no_gpu_work_for_anothers_step(models):
    """Issue 7, item 8: layers run inside the step that finishes them, so a sequence that appends,
    runs two layers and is truncated (or closed) has recorded nothing that another step would run."""
    model = load(models, "tiny-llama-F32.gguf")
    backend = model.backend

    def other_step_dispatches() -> tuple[int, np.ndarray]:
        seq = model.open_sequence(16)
        before = backend.dispatches_submitted
        logits = seq.step([1, 2, 3])
        seq.close()
        return backend.dispatches_submitted - before, logits

    clean, expected = other_step_dispatches()
    held = backend.kv_pool.stats().blocks_used  # caches other tests of this module left open
    for round_ in range(50):
        seq = model.open_sequence(16)
        seq.step([4, 5])
        seq.append([6, 7])
        seq.forward_layer(0)
        seq.forward_layer(1)
        if round_ % 2:
            seq.truncate(1)
        seq.close()
    after, logits = other_step_dispatches()
    assert after == clean  # not one leftover dispatch of the 50 abandoned steps
    assert np.array_equal(logits, expected)
    assert backend.kv_pool.stats().blocks_used == held


@pytest.mark.parametrize("name,weights", [("tiny-gemma3-Q4_K.gguf", "Q4_K"), ("tiny-llama-F32.gguf", "F32")])
def test_one_batched_step_of_ragged_sequences_matches_llamacpp(models, name, weights):
    """Both reference sequences and a decode row of a third in one step: one encoder, one read-back."""
    model = load(models, name)
    refs = reference_sequences(name.replace(".gguf", ".logits.npz"))
    seqs = [model.open_sequence(len(tokens)) for tokens, _ in refs]
    decoder = model.open_sequence(8)
    alone = decoder.step([3, 4, 5])
    decoder.truncate(2)
    items = [StepItem(tokens.astype(np.int32), 0, s._cache, "all") for (tokens, _), s in zip(refs, seqs, strict=True)]
    items.append(StepItem(np.array([5], np.int32), 2, decoder._cache, "last"))
    for item in items:
        item.cache.reserve(item.pos + len(item.tokens))
    *prefills, last = model.backend.step(items)
    for logits, (_, expected) in zip(prefills, refs, strict=True):
        assert_matches(logits, expected, tolerance_for(weights), name)
    assert np.array_equal(last, alone)  # the row in company equals the row alone, bit for bit
    for s in (*seqs, decoder):
        s.close()


def test_sequences_whose_blocks_interleave_in_the_pool_match_llamacpp_and_their_solo_runs(models):
    """Two sequences decoding in the same steps take blocks in turns, so each one's blocks are
    scattered through the pool (gemma3's window-8 layers slide across block boundaries too); the
    pool's buffers are never replaced and nothing is copied as the sequences grow."""
    model = load(models, "tiny-gemma3-Q8_0.gguf")
    backend = model.backend
    (a_tokens, a_expected), (b_tokens, _) = reference_sequences("tiny-gemma3-Q8_0.logits.npz")
    storage = [*backend._kv_k, *backend._kv_v]

    def run(sequences: list[np.ndarray], start: int, end: int) -> list[list[np.ndarray]]:
        """Prefill each sequence's first `start` tokens, then decode them all together up to `end`."""
        caches = [backend.new_cache(end) for _ in sequences]
        rows = [[backend.step([StepItem(tokens[:start].astype(np.int32), 0, cache, "last")])[0]]
                for tokens, cache in zip(sequences, caches, strict=True)]
        for pos in range(start, end):
            items = [StepItem(tokens[pos : pos + 1].astype(np.int32), pos, cache, "last")
                     for tokens, cache in zip(sequences, caches, strict=True)]
            for i, out in enumerate(backend.step(items)):
                rows[i].append(out)
        if len(sequences) > 1:
            assert any(np.diff(cache.blocks).max() > 1 for cache in caches)  # the blocks do interleave
        for cache in caches:
            cache.free()
        return rows

    end = min(len(a_tokens), len(b_tokens))
    together, alone = run([a_tokens, b_tokens], 10, end), run([a_tokens], 10, end)
    assert_matches(np.stack(together[0]), a_expected[9:end], tolerance_for("Q8_0"))
    for got, solo in zip(together[0], alone[0], strict=True):
        assert np.array_equal(got, solo)
    assert [*backend._kv_k, *backend._kv_v] == storage


def test_truncate_gives_blocks_back_and_the_next_sequence_reuses_them(models):
    backend = load(models, "tiny-llama-Q8_0.gguf").backend
    pool = backend.kv_pool
    held = pool.stats().blocks_used
    cache = backend.new_cache(64)
    backend.step([StepItem(np.arange(1, 41, dtype=np.int32), 0, cache, "none")])
    assert len(cache.blocks) == 3 and pool.stats().blocks_used == held + 3
    freed = cache.blocks[1:]
    cache.truncate(10)
    assert cache.blocks and len(cache.blocks) == 1 and pool.stats().blocks_used == held + 1
    other = backend.new_cache(32)
    backend.step([StepItem(np.arange(1, 20, dtype=np.int32), 0, other, "none")])
    assert sorted(other.blocks) == sorted(freed)
    for c in (cache, other):
        c.free()
    assert pool.stats().blocks_used == held


def test_the_pool_fits_one_storage_binding_per_layer(models):
    backend = WgpuBackend(load(models, "tiny-llama-F32.gguf").config, GGUFFile(DATA / "tiny-llama-F32.gguf").tensors)
    pool = backend.configure_kv(1 << 40)  # a terabyte asked for: each layer's buffer still binds whole
    assert pool.n_blocks * pool.block_tokens * backend.config.kv_dim * 2 <= backend.ctx.max_binding_size
    assert all(buf.size <= backend.ctx.max_binding_size for buf in backend._kv_k)
    assert backend.configure_kv(1 << 20).n_blocks == (1 << 20) // pool.block_bytes
