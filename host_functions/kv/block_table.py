"""A sequence's block table: which blocks of the model's KV pool hold its positions."""

from __future__ import annotations

import numpy as np

from host_functions.errors import BackendError, KVPoolTooSmall
from host_functions.kv.pool import KVPool, describe_bytes


class KVCache:
    """One sequence's block table in the model's KV pool, for at most `capacity` positions.

    Blocks are taken from the pool by `reserve` (before a step writes new positions) and given
    back by `truncate` and `free`; a backend subclass adds where the keys and values live.
    """

    def __init__(self, pool: KVPool, capacity: int) -> None:
        self.pool, self.capacity = pool, capacity
        self.blocks: list[int] = []  # pool block of positions [i*block_tokens, (i+1)*block_tokens)

    def reserve(self, n_positions: int) -> None:
        """Hold blocks for positions 0..n_positions-1; KVPoolFull (nothing taken) if the pool is short,
        KVPoolTooSmall if even the whole pool could not hold them."""
        if n_positions > self.capacity:
            raise BackendError(f"KV cache capacity of {self.capacity} positions exceeded ({n_positions})")
        needed = self.pool.blocks_for(n_positions)
        if needed > self.pool.n_blocks:
            raise KVPoolTooSmall(f"KV cache memory too small: {n_positions} positions need {needed} blocks, the "
                                 f"whole pool holds {self.pool.n_blocks} "
                                 f"(budget {describe_bytes(self.pool.budget_bytes)}, --kv-memory)")
        if needed > len(self.blocks):
            self.blocks += self.pool.allocate(needed - len(self.blocks))

    def truncate(self, length: int) -> None:
        """Forget positions >= length, giving back the blocks no kept position uses."""
        keep = self.pool.blocks_for(length)
        self.pool.release(self.blocks[keep:])
        del self.blocks[keep:]

    def free(self) -> None:
        """Give every block back; the cache holds nothing afterwards."""
        self.truncate(0)

    def slots(self, start: int, end: int) -> np.ndarray:
        """Flat pool slot (block * block_tokens + offset) of positions start..end-1: int64 (end-start,)."""
        positions = np.arange(start, end)
        table = np.asarray(self.blocks, np.int64)
        return table[positions // self.pool.block_tokens] * self.pool.block_tokens + positions % self.pool.block_tokens
