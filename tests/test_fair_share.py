"""Fair shares of the shared resources (docs/isolation.md): the share arithmetic, KV blocks per tenant
through the real scheduler on a tiny model, long prefills cut into parts beside decoding sequences
without changing a logit, and adapter bytes per tenant in the adapter pool."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from oracle import DATA
from test_lora_loading import config_of
from test_scheduler import _steps_submitted

from host_functions.engine import scheduler as scheduler_module
from host_functions.engine.model import Model, StepOwner
from host_functions.errors import AdapterError, KVPoolTooSmall, Overloaded
from host_functions.fair_share import Claim, FairShares, NeverFits, Refused
from host_functions.kv.pool import BLOCK_TOKENS
from host_functions.lora.adapter import load_adapter
from host_functions.lora.merged import MergedLoraCache
from host_functions.lora.pool import AdapterPool

TINY = DATA / "tiny-gemma3-F32.gguf"


def _model(kv_blocks: int) -> Model:
    model = Model.load(TINY, kv_memory=64 << 20, batched=True)
    model.set_kv_memory(kv_blocks * model.backend.kv_block_bytes(BLOCK_TOKENS))
    return model


# ---- the arithmetic ----------------------------------------------------------------------------

def test_a_lone_tenant_uses_all_but_the_reserve_and_a_newcomer_gets_the_reserve_at_once():
    shares = FairShares(64, "blocks")
    assert shares.reserve == 8
    shares.take(Claim("a"), 56, free=64)  # work-conserving: alone, it may use what nobody else wants
    with pytest.raises(Refused, match="56 it may hold at once"):
        shares.take(Claim("a"), 1, free=8)
    shares.take(Claim("b"), 8, free=8)  # the newcomer's reserve was kept free for it
    assert shares.holders() == {"a": 56, "b": 8}


def test_a_tenant_over_its_share_cannot_take_what_another_active_tenants_share_needs():
    shares = FairShares(64, "blocks")
    shares.take(Claim("a"), 40, free=64)
    shares.take(Claim("b"), 2, free=24)
    assert shares.share(Claim("a")) == shares.share(Claim("b")) == 32
    with pytest.raises(Refused, match="over its share"):
        shares.take(Claim("a"), 1, free=22)  # b's share still needs 30 of the 22 free
    shares.take(Claim("b"), 22, free=22)  # b, under its share, takes them
    shares.give("a", 40)
    shares.take(Claim("a"), 30, free=40)  # below its share again: granted
    assert shares.holders() == {"a": 30, "b": 24}


def test_weights_set_the_shares_and_a_waiting_tenant_counts_as_active():
    shares = FairShares(100, "places", reserve_fraction=0)
    shares.take(Claim("a", weight=3), 10, free=100)
    shares.wait(Claim("b", weight=1))
    assert shares.share(Claim("a", weight=3)) == 75 and shares.share(Claim("b")) == 25
    with pytest.raises(Refused, match="over its share"):
        shares.take(Claim("a", weight=3), 70, free=90)  # 80 > 75, and b's 25 would not stay free
    shares.done_waiting("b")
    shares.take(Claim("a", weight=3), 70, free=90)  # b left: a is alone again
    assert shares.held("a") == 80


def test_a_tenant_between_two_requests_keeps_its_share_for_the_linger():
    shares = FairShares(4, "workers", reserve_fraction=1 / 4, linger_s=0.2)
    shares.take(Claim("client"), 1, free=4)
    shares.take(Claim("backlog"), 2, free=3)
    shares.give("client", 1)  # its run ended; its next request is on its way
    with pytest.raises(Refused, match="over its share"):
        shares.take(Claim("backlog"), 1, free=2)  # the last free worker is the client's share
    shares.take(Claim("client"), 1, free=2)  # it came back in time: served at once
    shares.give("client", 1)
    time.sleep(0.3)  # it did not come back: the backlog may use what it left idle
    shares.take(Claim("backlog"), 1, free=2)
    assert shares.holders() == {"backlog": 3}


def test_a_claim_beyond_the_tenants_cap_or_the_pool_never_fits():
    shares = FairShares(64, "blocks")
    with pytest.raises(NeverFits, match="more than a tenant may hold at once \\(10 of 64, its own limit\\)"):
        shares.take(Claim("a", cap=10), 11, free=64)
    with pytest.raises(NeverFits, match="56 of 64"):
        shares.take(Claim("a"), 57, free=64)
    shares.take(Claim(""), 64, free=64)  # no tenant (the engine on its own): the whole pool


# ---- KV blocks through the scheduler ---------------------------------------------------------------

def test_a_tenant_holding_the_pool_leaves_room_for_another_tenants_request():
    model = _model(kv_blocks=16)  # reserve: 2 blocks
    hog = model.open_sequence(512)
    hog.step(list(range(1, 14 * BLOCK_TOKENS + 1)), StepOwner(tenant="hog"))  # 14 blocks: all it may hold
    assert model.backend.kv_pool.shares.holders() == {"hog": 14}
    more = model.open_sequence(64)
    with pytest.raises(Overloaded, match="deadline waiting for KV memory: .*hog.*may hold at once"):
        more.step([1, 2, 3], StepOwner(tenant="hog", deadline=time.monotonic() + 0.5))
    small = model.open_sequence(64)
    logits = small.step(list(range(1, 2 * BLOCK_TOKENS + 1)), StepOwner(tenant="benign"))  # 2 blocks: served
    assert logits.shape == (model.config.n_vocab,)
    for seq in (hog, more, small):
        seq.close()
    pool = model.backend.kv_pool
    # their full blocks stay cached, counted in their shares (docs/prefix_cache.md), until needed
    assert pool.stats().blocks_used == 0 and pool.shares.holders() == {"hog": 14, "benign": 2}
    pool.set_prefix_cache(False)
    assert pool.shares.holders() == {}


def test_a_sequence_longer_than_a_tenant_may_ever_hold_fails_at_once_naming_the_limit():
    model = _model(kv_blocks=16)
    seq = model.open_sequence(512)
    with pytest.raises(KVPoolTooSmall, match="tenant may hold 4 of the pool's 16.*kv_blocks"):
        seq.step(list(range(1, 5 * BLOCK_TOKENS + 1)), StepOwner(tenant="t", kv_blocks=4))
    assert seq.kv_blocks == 0 and model.backend.kv_pool.stats().blocks_used == 0
    seq.close()


# ---- step time: long prefills in parts beside decoding ---------------------------------------------

def _record_steps(model, monkeypatch, what):
    """A list that gets, for each step the backend runs, `what(item)` of each of its items."""
    steps: list[list] = []
    step = model.backend.step

    def recording_step(items):
        steps.append([what(item) for item in items])
        return step(items)

    monkeypatch.setattr(model.backend, "step", recording_step)
    return steps


def test_a_tenant_alone_prefills_whole_chunks_right_after_its_own_decoding(monkeypatch):
    """The cap beside decoding protects other tenants' latency: a tenant's next prompt after its own
    decoding (a chat turn, a benchmark) is not cut into short steps."""
    model = _model(kv_blocks=64)
    sizes = _record_steps(model, monkeypatch, lambda item: len(item.tokens))
    monkeypatch.setattr(scheduler_module, "DECODE_LINGER_S", 600.0)  # its decoding stays recent
    seq = model.open_sequence(256)
    owner = StepOwner(tenant="a")
    seq.step([1, 2, 3], owner)
    for token in (4, 5, 6):
        seq.step([token], owner)  # decoding
    sizes.clear()
    seq.step(list(range(7, 107)), owner)
    assert sizes == [[100]]
    seq.close()


def test_two_tenants_prefilling_share_short_steps_and_one_alone_takes_whole_chunks(monkeypatch):
    model = _model(kv_blocks=64)
    scheduler = model.scheduler
    assert scheduler is not None
    prompt = list(range(1, 101))
    sizes = _record_steps(model, monkeypatch, lambda item: len(item.tokens))
    monkeypatch.setattr(scheduler_module, "DECODE_LINGER_S", 600.0)  # "a" stays recent however slow the machine
    alone = model.open_sequence(128)
    expected = alone.step(prompt, StepOwner(tenant="a"))
    alone.close()
    assert sizes == [[100]]  # one tenant: the whole chunk in one step
    sizes.clear()
    submitted = _steps_submitted(scheduler, monkeypatch)
    seqs = [model.open_sequence(128) for _ in range(2)]
    got: dict[str, np.ndarray] = {}

    def prefill(seq, tenant: str) -> None:
        got[tenant] = seq.step(prompt, StepOwner(tenant=tenant))

    # b comes first: a, seen just before, is still a recent tenant, so even b's first step is shared
    threads = [threading.Thread(target=prefill, args=(seq, t)) for seq, t in zip(seqs, "ba", strict=True)]
    with model.backend.step_lock:
        for t in threads:
            t.start()
            assert submitted.acquire(timeout=60)
    for t in threads:
        t.join(60)
    assert all(sum(step_sizes) <= scheduler.shared_prefill_cap for step_sizes in sizes), sizes
    assert np.array_equal(got["a"], expected) and np.array_equal(got["b"], expected)  # cut, same logits
    for seq in seqs:
        seq.close()


def test_a_long_prefill_runs_in_parts_beside_a_decoding_tenant_with_the_same_logits(monkeypatch):
    model = _model(kv_blocks=64)
    scheduler = model.scheduler
    assert scheduler is not None
    prompt = list(range(1, 61))
    solo = model.open_sequence(128)
    expected = [solo.step(prompt), solo.step([7])]
    solo.close()
    scheduler.prefill_cap = 8
    sizes = _record_steps(model, monkeypatch, lambda item: (len(item.tokens), item.wants))
    submitted = _steps_submitted(scheduler, monkeypatch)
    got: list = []
    first, second, prefiller = (model.open_sequence(128) for _ in range(3))

    def prefill():
        got.extend([prefiller.step(prompt, StepOwner(tenant="p")), prefiller.step([7], StepOwner(tenant="p"))])

    threads = [threading.Thread(target=lambda: first.step([2], StepOwner(tenant="d"))),
               threading.Thread(target=prefill),
               threading.Thread(target=lambda: second.step([3], StepOwner(tenant="d")))]
    # The backend is held, so every step waits while the long prefill and the decodes queue up: a step
    # then has both to choose from.
    with model.backend.step_lock:
        for t in threads:
            t.start()
            assert submitted.acquire(timeout=60)
    for t in threads:
        t.join(60)
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    assert any((8, "none") in step_sizes for step_sizes in sizes), sizes  # it was cut
    for seq in (first, second, prefiller):
        seq.close()


# ---- the adapter pool ------------------------------------------------------------------------------

def test_adapter_bytes_are_charged_per_tenant_and_an_over_share_tenant_is_refused():
    config = config_of(DATA / "tiny-llama-F32.gguf")
    path = DATA / "tiny-llama-lora-r8.gguf"
    nbytes = load_adapter(path, config).nbytes
    pool = AdapterPool(config, budget_bytes=nbytes * 22 // 10)
    a = pool.acquire(path, Claim("a"))
    assert pool.acquire(path, Claim("a")) is a and pool.charges.shares.holders() == {"a": nbytes}  # charged once
    pool.acquire(path, Claim("b"))  # the same adapter, charged to b too: the budget is spent
    with pytest.raises(Overloaded, match="bytes of LoRA adapters needed, .* free"):  # it may wait for room
        pool.acquire(path, Claim("c"))
    pool.release(a, "a")
    pool.release(a, "a")
    pool.acquire(path, Claim("c"))  # a gave its charge back
    with pytest.raises(AdapterError, match="more than a tenant may hold at once.*its own limit.*adapter_bytes"):
        pool.acquire(path, Claim("d", cap=nbytes - 1))  # waiting cannot help
    assert pool.charges.shares.holders() == {"b": nbytes, "c": nbytes}


def test_merged_lora_bytes_are_charged_to_the_tenants_sequences_hold_them_for():
    model = Model.load(DATA / "tiny-gemma3-F32.gguf", backend="numpy")
    adapter = model.adapters.acquire(DATA / "tiny-gemma3-lora-r8.gguf")
    one = model.backend.merged_lora.merged_nbytes(adapter)
    model.backend.merged_lora = MergedLoraCache(model.backend, model.config, budget_bytes=one * 3 // 2)
    first, second = model.open_sequence(8), model.open_sequence(8)
    first.set_adapter(adapter, 1.0, merged=True, claim=Claim("a"))
    with pytest.raises(Overloaded, match="merged weights: .*bytes of merged LoRA weights needed"):
        second.set_adapter(adapter, 1.0, merged=True, claim=Claim("b"))  # the same copy, but b's share
    first.close()  # a's charge comes back
    second.set_adapter(adapter, 1.0, merged=True, claim=Claim("b"))
    assert model.backend.merged_lora.charges.shares.holders() == {"b": one}
    second.close()
    assert model.backend.merged_lora.charges.shares.holders() == {}
