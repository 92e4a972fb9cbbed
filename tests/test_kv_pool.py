"""The paged KV pool: blocks only for the tokens a sequence holds, freed by truncate and close,
all-or-nothing allocation and a clear error naming the budget when it is full."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import DATA

from host_functions.engine.model import Model
from host_functions.errors import KVPoolFull, QuotaExceeded
from host_functions.kv.pool import BLOCK_TOKENS, KVPool, parse_bytes

TINY = DATA / "tiny-gemma3-F32.gguf"


def test_pool_allocates_all_or_nothing_and_tracks_peak():
    pool = KVPool(budget_bytes=10 * 100, block_bytes=100)
    first = pool.allocate(7)
    assert len(set(first)) == 7 and pool.stats().blocks_used == 7
    with pytest.raises(KVPoolFull, match=r"4 more KV blocks needed, 3 of 10 free \(budget 1000 bytes"):
        pool.allocate(4)
    assert pool.stats().blocks_used == 7  # the failed allocation took nothing
    pool.release(first[:5])
    assert pool.stats().blocks_used == 2 and pool.stats().blocks_peak == 7
    assert not set(pool.allocate(8)) & set(first[5:])  # never hands out a block in use


def test_budget_too_small_for_one_block_is_refused():
    with pytest.raises(QuotaExceeded, match="holds no block"):
        KVPool(budget_bytes=99, block_bytes=100)


def test_sequence_holds_blocks_only_for_its_tokens_and_gives_them_back():
    model = Model.load(TINY, kv_memory=1 << 20)
    pool = model.backend.kv_pool
    seq = model.open_sequence(500)
    assert seq.kv_blocks == 0  # opening reserves nothing: capacity is a limit, not an allocation
    seq.step(list(range(1, 2 * BLOCK_TOKENS + 2)))  # 33 tokens -> 3 blocks
    assert seq.kv_blocks == 3 and pool.stats().blocks_used == 3
    seq.truncate(BLOCK_TOKENS)
    assert seq.kv_blocks == 1 and pool.stats().blocks_used == 1
    seq.close()
    assert pool.stats().blocks_used == 0


def test_full_pool_fails_the_step_without_touching_another_sequence():
    model = Model.load(TINY)
    model.set_kv_memory(model.backend.kv_block_bytes(BLOCK_TOKENS) * 4)
    holder = model.open_sequence(500)
    before = holder.step(list(range(1, 3 * BLOCK_TOKENS)))  # 47 tokens: 3 of the 4 blocks
    greedy = int(np.argmax(before))
    other = model.open_sequence(500)
    with pytest.raises(KVPoolFull, match="KV cache memory full.*--kv-memory"):
        other.step(list(range(100, 100 + 2 * BLOCK_TOKENS)))  # needs 2 blocks, 1 free (no prefix in common)
    assert other.kv_blocks == 0 and len(other.tokens) == 0  # nothing half-committed
    after = holder.step([greedy])  # the holder carries on: its blocks are its own
    alone = Model.load(TINY)
    ref = alone.open_sequence(500)
    ref.step(list(range(1, 3 * BLOCK_TOKENS)))
    assert np.array_equal(after, ref.step([greedy]))


@pytest.mark.parametrize("text,value", [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("4096", 4096),
                                        ("64kb", 64 << 10)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "-1G", "0", "lots", "nanM", "infG"])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_bytes(text)
