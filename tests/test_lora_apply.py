"""LoRA on every backend: llama.cpp's logits with each adapter and scale, unmerged and merged, a batch of
sequences with different adapters (or none) equal to each sequence alone, and a guest that can only
find its own tenant's adapters."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from oracle import DATA, assert_matches, lora_cases, reference_sequences, tolerance_for
from test_lora_loading import config_of, write_peft

from host_functions.abi import AdapterBinding
from host_functions.backends.base import StepItem
from host_functions.engine.model import Model
from host_functions.errors import AdapterError, GuestError
from host_functions.lora.pool import AdapterPool
from realm.sandbox.intake import compile_guest, reference_guest_path
from realm.sandbox.run import TenantSandbox

ADAPTER = DATA / "tiny-llama-lora-r8.gguf"


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("backend", ["numpy", "cpu", "wgpu"])
@pytest.mark.parametrize("logits_file, base, lora, scale", lora_cases())
def test_adapter_gives_llamacpps_logits(backend, logits_file, base, lora, scale, merged):
    model = Model.load(DATA / base, backend=backend)
    adapter = model.adapters.acquire(DATA / lora)
    weights = base.removesuffix(".gguf").rsplit("-", 1)[1]
    for tokens, ref in reference_sequences(logits_file):
        assert_matches(model.logits_for(tokens.tolist(), lora=(adapter, scale), merged=merged), ref,
                       tolerance_for(weights, lora=True), logits_file)
    if merged:  # the copy stays cached, and idle once the sequences are gone
        assert model.backend.merged_lora.used_bytes > 0 and not model.backend.merged_lora.in_use()


@pytest.mark.parametrize("backend", ["numpy", "cpu", "wgpu"])
def test_a_mixed_batch_of_adapters_equals_each_sequence_alone(backend, tmp_path):
    model = Model.load(DATA / "tiny-llama-F32.gguf", backend=backend)
    config = config_of(DATA / "tiny-llama-F32.gguf")
    base_adapter = model.adapters.acquire(ADAPTER)
    folders = [write_peft(base_adapter, config, tmp_path / f"a{i}", lora_alpha=4 + 4 * i) for i in range(3)]
    adapters = [base_adapter] + [model.adapters.acquire(f) for f in folders]
    choices = [None, *[(a, s) for a in adapters for s in (0.5, 1.0)]]  # 4 adapters (8 settings) and none
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, config.n_vocab, size=int(rng.integers(3, 12))).astype(np.int32) for _ in range(16)]
    loras = [choices[i % len(choices)] for i in range(16)]

    def run(indices: list[int]) -> list[np.ndarray]:
        caches = [model.backend.new_cache(32) for _ in indices]
        items = [StepItem(prompts[i], 0, cache, "all", None, loras[i])
                 for i, cache in zip(indices, caches, strict=True)]
        for item in items:
            item.cache.reserve(len(item.tokens))
        out = model.backend.step(items)
        for cache in caches:
            cache.free()
        return out

    together = run(list(range(16)))
    for i in range(16):
        np.testing.assert_array_equal(together[i], run([i])[0], err_msg=f"sequence {i} ({loras[i]})")
    assert not np.array_equal(run([1])[0], Model.load(DATA / "tiny-llama-F32.gguf", backend=backend)
                              .logits_for(prompts[1].tolist()))  # the adapter does change the logits


@pytest.fixture(scope="module")
def tiny():
    return Model.load(DATA / "tiny-llama-F32.gguf", backend="numpy")


@pytest.fixture(scope="module")
def guest():
    return compile_guest(reference_guest_path().read_bytes())


def test_the_reference_guest_applies_the_adapter_its_request_names(tiny, guest):
    request = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 12}
    plain = TenantSandbox(tiny).run(guest, request).text
    bound = {"style": AdapterBinding(str(ADAPTER), 1.0)}
    adapted = TenantSandbox(tiny).run(guest, {**request, "lora": "style"}, adapters=bound).text
    assert adapted != plain
    # The same as greedy decoding on the adapted model, computed here step by step.
    adapter = tiny.adapters.acquire(ADAPTER)
    ids = tiny.tokenizer.encode(request["prompt"])
    for _ in range(12):
        ids.append(int(np.argmax(tiny.logits_for(ids, lora=(adapter, 1.0))[-1])))
    tiny.adapters.release(adapter)
    assert adapted == tiny.tokenizer.decode(ids[-12:])
    # Without the binding, the alias names nothing: another tenant's aliases are not this request's.
    with pytest.raises(GuestError, match="no such LoRA adapter"):
        TenantSandbox(tiny).run(guest, {**request, "lora": "style"})


def test_an_adapter_that_does_not_fit_the_model_is_one_clear_error(guest):
    gemma = Model.load(DATA / "tiny-gemma3-F32.gguf", backend="numpy")
    with pytest.raises(AdapterError, match="LoRA adapter 'x': made for architecture 'llama'"):
        TenantSandbox(gemma).run(guest, {"prompt": "hi", "max_tokens": 2, "lora": "x"},
                                 adapters={"x": AdapterBinding(str(ADAPTER))})


def test_adapters_held_by_a_request_are_released_when_it_ends(tiny, guest):
    bound = {"style": AdapterBinding(str(ADAPTER), 0.5)}
    TenantSandbox(tiny).run(guest, {"prompt": "hi", "max_tokens": 2, "lora": "style"}, adapters=bound)
    assert not tiny.adapters.in_use()  # idle: the pool may drop it when room is needed


def test_wgpu_uploads_an_adapter_once_and_lets_it_go_with_the_adapter_pool(tmp_path):
    model = Model.load(DATA / "tiny-llama-F32.gguf", backend="wgpu")
    first = model.adapters.acquire(ADAPTER)
    model.adapters = AdapterPool(model.config, budget_bytes=first.nbytes * 3 // 2)  # room for one adapter
    other_folder = write_peft(first, config_of(DATA / "tiny-llama-F32.gguf"), tmp_path / "other", lora_alpha=4)
    del first
    first = model.adapters.acquire(ADAPTER)
    tokens = [1, 50, 60, 70]
    with_first = model.logits_for(tokens, lora=(first, 1.0))
    uploaded = model.backend._adapters[first]
    assert np.array_equal(model.logits_for(tokens, lora=(first, 1.0)), with_first)
    assert model.backend._adapters[first] is uploaded  # not uploaded again
    gone = weakref.ref(first)
    model.adapters.release(first)
    del first, uploaded
    second = model.adapters.acquire(other_folder)  # no room: the pool drops the idle first adapter
    assert not np.array_equal(model.logits_for(tokens, lora=(second, 1.0)), with_first)
    gc.collect()
    assert gone() is None and list(model.backend._adapters) == [second]  # its GPU buffers went with it
