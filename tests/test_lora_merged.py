"""LoRA merged into cached weight copies on every backend (llama.cpp's logits in both modes are in
test_lora_apply): shared base weights left as they are, a sequence's rows merged or not by its own choice whoever
shares the step, and the cache's budget."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from oracle import DATA
from test_lora_loading import config_of, write_peft

from host_functions.backends.base import StepItem
from host_functions.engine.model import Model
from host_functions.errors import AdapterError, Overloaded
from host_functions.lora.merged import MergedLoraCache

ADAPTER = DATA / "tiny-llama-lora-r8.gguf"
BASE = DATA / "tiny-llama-F32.gguf"


@pytest.mark.parametrize("backend", ["numpy", "cpu", "wgpu"])
def test_merging_leaves_the_shared_weights_and_other_sequences_alone(backend):
    model = Model.load(BASE, backend=backend)
    tokens = [1, 45, 96, 173, 17]
    plain = model.logits_for(tokens)
    before = [np.array(model.backend.float_weight(0, key)) for key in ("qkv", "gate_up")]
    adapter = model.adapters.acquire(ADAPTER)
    merged = model.logits_for(tokens, lora=(adapter, 1.0), merged=True)
    assert not np.allclose(merged, plain, atol=1e-3)
    for key, weight in zip(("qkv", "gate_up"), before, strict=True):
        np.testing.assert_array_equal(model.backend.float_weight(0, key), weight)
    np.testing.assert_array_equal(model.logits_for(tokens), plain)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "wgpu"])
def test_a_batch_mixing_merged_unmerged_and_plain_rows_equals_each_sequence_alone(backend, tmp_path):
    model = Model.load(BASE, backend=backend)
    config = config_of(BASE)
    first = model.adapters.acquire(ADAPTER)
    second = model.adapters.acquire(write_peft(first, config, tmp_path / "b", lora_alpha=8))
    cache = model.backend.merged_lora
    merged = {(a.digest, s): cache.acquire(a, s) for a in (first, second) for s in (0.5, 1.0)}
    settings = [None, *[(a, s, m) for a in (first, second) for s in (0.5, 1.0) for m in (False, True)]]
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, config.n_vocab, size=int(rng.integers(2, 9))).astype(np.int32) for _ in range(12)]
    choice = [settings[(i * 5) % len(settings)] for i in range(12)]

    def item(i: int) -> StepItem:
        cache_ = model.backend.new_cache(16)
        cache_.reserve(len(prompts[i]))
        if choice[i] is None:
            return StepItem(prompts[i], 0, cache_, "all")
        adapter, scale, as_merged = choice[i]
        return StepItem(prompts[i], 0, cache_, "all", None, (adapter, scale),
                        merged[(adapter.digest, scale)] if as_merged else None)

    def run(indices: list[int]) -> list[np.ndarray]:
        items = [item(i) for i in indices]
        out = model.backend.step(items)
        for it in items:
            it.cache.free()
        return out

    together = run(list(range(12)))
    for i in range(12):
        np.testing.assert_array_equal(together[i], run([i])[0], err_msg=f"sequence {i} ({choice[i]})")
    # merged and unmerged compute the same weights, rounded differently
    same = [i for i in range(12) if choice[i] == (first, 1.0, True)]
    twin = StepItem(prompts[same[0]], 0, model.backend.new_cache(16), "all", None, (first, 1.0))
    twin.cache.reserve(len(twin.tokens))
    np.testing.assert_allclose(model.backend.step([twin])[0], together[same[0]], atol=1e-3)


def test_the_budget_drops_idle_entries_first_and_refuses_what_cannot_fit():
    model = Model.load(BASE, backend="numpy")
    adapter = model.adapters.acquire(ADAPTER)
    one = model.backend.merged_lora.merged_nbytes(adapter)
    cache = model.backend.merged_lora = MergedLoraCache(model.backend, model.config, budget_bytes=2 * one)
    a, b = cache.acquire(adapter, 0.5), cache.acquire(adapter, 1.0)
    assert cache.used_bytes == 2 * one
    seq = model.open_sequence(8)
    with pytest.raises(Overloaded, match="merged LoRA memory budget"):
        seq.set_adapter(adapter, 2.0, merged=True)  # both held: no room now
    assert seq.adapter is None and seq.merged is None  # the sequence keeps what it had
    cache.release(a)
    seq.set_adapter(adapter, 2.0, merged=True)  # the idle 0.5 entry is dropped
    assert {e.scale for e in cache.cached()} == {1.0, 2.0}
    assert cache.acquire(adapter, 1.0) is b  # reused, not rebuilt
    seq.close()
    assert cache.in_use() == {(adapter.digest, 1.0): 2}
    tiny = model.backend.merged_lora = MergedLoraCache(model.backend, model.config, budget_bytes=one - 1)
    with pytest.raises(AdapterError, match="do not fit"):
        tiny.acquire(adapter, 1.0)


def test_wgpu_uploads_each_merged_copy_once_and_releases_its_buffers_when_the_cache_drops_it():
    model = Model.load(BASE, backend="wgpu")
    adapter = model.adapters.acquire(ADAPTER)
    one = model.backend.merged_lora.merged_nbytes(adapter)
    cache = model.backend.merged_lora = MergedLoraCache(model.backend, model.config, budget_bytes=one)
    entry = cache.acquire(adapter, 0.5)
    copies = entry.projection(0, "qkv")
    assert set(copies) == {"q", "k", "v"} and all(w.fmt.name == "F32" for w in copies.values())  # by output
    assert entry.nbytes == one == sum(w.nbytes for layer in range(model.config.n_layers)
                                      for key in ("qkv", "gate_up", "attn_output", "ffn_down")
                                      for w in (entry.projection(layer, key) or {}).values())
    buffers = [weakref.ref(part.buffer) for part in copies["q"].parts]
    assert cache.acquire(adapter, 0.5) is entry  # built and uploaded once
    cache.release(entry)
    cache.release(entry)
    del entry, copies
    gc.collect()
    assert all(ref() is not None for ref in buffers)  # cached while idle
    cache.acquire(adapter, 1.0)  # no room beside the idle 0.5 copy: it is dropped
    gc.collect()
    assert all(ref() is None for ref in buffers)


def test_a_merged_binding_runs_merged_through_the_guest_and_lets_go_when_the_request_ends():
    from host_functions.abi import AdapterBinding
    from realm.sandbox.intake import compile_guest, reference_guest_path
    from realm.sandbox.run import TenantSandbox

    model = Model.load(BASE, backend="numpy")
    guest = compile_guest(reference_guest_path().read_bytes())
    request = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 8, "lora": "style"}
    text = TenantSandbox(model).run(guest, request, adapters={"style": AdapterBinding(str(ADAPTER), 0.5, True)}).text
    cache = model.backend.merged_lora
    assert cache.used_bytes > 0 and not cache.in_use()  # built for the request, idle after it
    adapter = model.adapters.acquire(ADAPTER)
    ids = model.tokenizer.encode(request["prompt"])
    for _ in range(8):
        ids.append(int(np.argmax(model.logits_for(ids, lora=(adapter, 0.5), merged=True)[-1])))
    assert text == model.tokenizer.decode(ids[-8:])
