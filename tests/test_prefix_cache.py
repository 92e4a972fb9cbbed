"""The prefix cache (docs/prefix_cache.md): a tenant's follow-up takes its cached full KV blocks and its
logits are bit-identical to recomputing them (numpy, cpu, wgpu; Gemma 3's sliding-window layers);
another tenant with the same prefix takes nothing; forks share blocks; a truncation into a shared
block recomputes it; idle cached blocks give way when the pool needs room."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from guest_helpers import TINY_LLAMA, compile_wat, data_i32, expect, hex_dump, hex_floats, prefill
from oracle import DATA

from host_functions.abi import Status
from host_functions.engine.model import Model
from host_functions.engine.scheduler import StepOwner
from host_functions.errors import QuotaExceeded
from host_functions.kv.pool import BLOCK_TOKENS
from realm.sandbox.run import TenantSandbox

TINY = DATA / "tiny-gemma3-Q4_K.gguf"  # sliding window 8 on 5 of its 6 layers
PROMPT = [(7 * i + 3) % 300 + 2 for i in range(3 * BLOCK_TOKENS + 5)]  # 53 tokens: 3 full blocks
FOLLOW = PROMPT + [11, 12, 13, 14, 15, 16, 17]


def _run(model: Model, tokens: list[int], tenant: str, decode: int = 3) -> tuple[list[np.ndarray], int]:
    """Logits after the prompt and after each of `decode` greedy tokens; the positions taken from the cache."""
    owner = StepOwner(tenant)
    seq = model.open_sequence(256)
    try:
        rows = [seq.step(tokens, owner)]
        for _ in range(decode):
            rows.append(seq.step([int(np.argmax(rows[-1]))], owner))
        return rows, seq.cached_tokens
    finally:
        seq.close()


@pytest.fixture(scope="module", params=["numpy", "cpu", "wgpu"])
def model(request: pytest.FixtureRequest) -> Model:
    return Model.load(TINY, backend=request.param, kv_memory=1 << 22, batched=True)


def _cold(model: Model, tokens: list[int]) -> list[np.ndarray]:
    model.backend.kv_pool.set_prefix_cache(False)
    try:
        rows, cached = _run(model, tokens, "acme")
        assert cached == 0
        return rows
    finally:
        model.backend.kv_pool.set_prefix_cache(True)


def test_follow_up_takes_cached_blocks_with_identical_logits(model: Model):
    cold = _cold(model, FOLLOW)
    _run(model, PROMPT, "acme")
    warm, cached = _run(model, FOLLOW, "acme")
    assert cached == 3 * BLOCK_TOKENS
    for a, b in zip(cold, warm, strict=True):
        assert np.array_equal(a, b)
    stats = model.backend.kv_pool.stats()
    assert stats.hit_tokens >= 3 * BLOCK_TOKENS and stats.cached_blocks >= 3


def test_another_tenant_takes_nothing(model: Model):
    _run(model, PROMPT, "acme")
    rows, cached = _run(model, FOLLOW, "other")
    assert cached == 0
    for a, b in zip(_cold(model, FOLLOW), rows, strict=True):
        assert np.array_equal(a, b)


def test_prompt_of_whole_blocks_still_computes_its_last_token(model: Model):
    tokens = PROMPT[:2 * BLOCK_TOKENS]
    _run(model, tokens, "whole")
    rows, cached = _run(model, tokens, "whole")
    assert cached == BLOCK_TOKENS  # the second block holds the last token, whose logits are wanted
    assert np.array_equal(rows[0], _cold(model, tokens)[0])


def test_fork_shares_blocks_and_truncation_into_a_shared_block_recomputes(model: Model):
    owner = StepOwner("forks")
    parent = model.open_sequence(256)
    parent.step(PROMPT, owner)
    used = model.backend.kv_pool.stats().blocks_used
    child = parent.fork()
    assert child.tokens == parent.tokens and model.backend.kv_pool.stats().blocks_used == used
    try:
        a, b = parent.step([20], owner), child.step([20], owner)  # the child recomputes the last 5 positions
        assert np.array_equal(a, b)
        child.truncate(BLOCK_TOKENS + 3)  # inside the second block, which the parent holds too
        c = child.step(PROMPT[BLOCK_TOKENS + 3:BLOCK_TOKENS + 9], owner)
        parent.truncate(BLOCK_TOKENS + 9)
        parent.step([21], owner)
        cold = _cold(model, PROMPT[:BLOCK_TOKENS + 9])[0]
        assert np.array_equal(c, cold)
    finally:
        parent.close()
        child.close()


def test_idle_cached_blocks_give_way_to_a_new_sequence():
    model = Model.load(TINY, backend="numpy")
    model.set_kv_memory(model.backend.kv_block_bytes(BLOCK_TOKENS) * 4)
    pool = model.backend.kv_pool
    _run(model, PROMPT, "a", decode=0)  # 4 blocks, 3 full ones kept
    assert pool.stats().cached_blocks == 3 and pool.stats().blocks_used == 0
    rows, cached = _run(model, FOLLOW[::-1], "b", decode=0)  # needs all 4 blocks: evicts a's
    assert cached == 0 and pool.stats().cached_blocks == 3
    assert pool.shares.holders() == {"b": 3}  # cached blocks count against their tenant's share


def test_no_prefix_cache_keeps_nothing():
    model = Model.load(TINY, backend="numpy", kv_memory=1 << 22)
    model.backend.kv_pool.set_prefix_cache(False)
    _run(model, PROMPT, "a", decode=0)
    _, cached = _run(model, PROMPT, "a", decode=0)
    assert cached == 0 and model.backend.kv_pool.stats().cached_blocks == 0


def test_seq_fork_through_the_abi_shares_the_prefix_and_gives_the_recomputed_logits():
    model = Model.load(TINY_LLAMA, backend="numpy")
    ids = [(5 * i + 1) % 200 + 1 for i in range(41)]
    step = """(drop (call $forward_layer (local.get {0}) (i32.const 0)))
      (drop (call $forward_layer (local.get {0}) (i32.const 1)))
      (drop (call $seq_finish (local.get {0})))"""
    body = f"""
      {prefill(40)}
      (local.set $a (call $seq_fork (local.get $s)))
      {expect("(call $seq_len (local.get $a))", "(i32.const 40)", 1)}
      (drop (call $seq_append (local.get $s) (i32.const 224) (i32.const 1)))
      {expect("(call $seq_fork (local.get $s))", f"(i32.const {Status.WRONG_STATE})", 2)}
      {step.format("$s")}
      (drop (call $seq_append (local.get $a) (i32.const 224) (i32.const 1)))
      {step.format("$a")}
      (drop (call $logits_read (local.get $s) (i32.const 1024) (i32.const 8)))
      (drop (call $logits_read (local.get $a) (i32.const 1056) (i32.const 8)))
      {hex_dump("(i32.const 8)", 1024, 1056)}
      (i32.const 0)"""
    result = TenantSandbox(model).run(compile_wat(body, extra=data_i32(ids, 64)), {})
    assert result.status == Status.OK, result.logs
    got = hex_floats(result.text).reshape(8, 2)
    want = model.logits_for(ids)[-1][:8]
    assert np.array_equal(got[:, 0], want) and np.array_equal(got[:, 1], want)


def test_identical_prompts_of_one_tenant_at_once_prefill_once():
    model = Model.load(TINY, backend="numpy", kv_memory=1 << 22, batched=True)
    results: list[tuple[list[np.ndarray], int]] = []
    threads = [threading.Thread(target=lambda: results.append(_run(model, FOLLOW, "twins", decode=1)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(cached for _, cached in results) == [0, 3 * BLOCK_TOKENS, 3 * BLOCK_TOKENS]
    for rows, _ in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0][0], rows, strict=True))


def test_a_tenant_at_its_own_ceiling_drops_only_its_own_cached_blocks():
    model = Model.load(TINY, backend="numpy")
    model.set_kv_memory(model.backend.kv_block_bytes(BLOCK_TOKENS) * 16)
    pool = model.backend.kv_pool
    _run(model, PROMPT, "keeper", decode=0)  # 3 cached blocks
    capped = StepOwner("capped", kv_blocks=4)
    seq = model.open_sequence(256)
    seq.step(FOLLOW[::-1][:4 * BLOCK_TOKENS], capped)  # all 4 blocks it may hold
    more = model.open_sequence(64)
    with pytest.raises(QuotaExceeded):
        more.step([1, 2, 3], StepOwner("capped", kv_blocks=4, deadline=time.monotonic() + 0.3))
    assert pool.shares.holders()["keeper"] == 3 and pool.stats().cached_blocks == 3
    seq.close()
    more.close()


def test_a_self_speculation_draft_keeps_its_own_blocks_apart_from_the_targets(model: Model):
    draft = model.first_layers(2)  # the same pool: its blocks hold 2 layers only
    cold_draft, cold_target = _cold(draft, FOLLOW), _cold(model, FOLLOW)
    _run(draft, PROMPT, "spec")
    target, cached = _run(model, FOLLOW, "spec")
    assert cached == 0  # the draft's blocks are not the target's
    warm, cached = _run(draft, FOLLOW, "spec")
    assert cached == 3 * BLOCK_TOKENS
    assert all(np.array_equal(a, b) for a, b in zip(cold_draft + cold_target, warm + target, strict=True))
