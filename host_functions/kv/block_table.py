"""A sequence's block table: which blocks of the model's KV pool hold its positions."""

from __future__ import annotations

import dataclasses

import numpy as np

from host_functions.errors import BackendError, KVPoolTooSmall
from host_functions.fair_share import NO_TENANT, Claim
from host_functions.kv.pool import KVPool, describe_bytes


class KVCache:
    """One sequence's block table in the model's KV pool, for at most `capacity` positions.

    Blocks are taken from the pool by `reserve` (before a step writes new positions) and given
    back by `truncate` and `free`; a backend subclass adds where the keys and values live.
    """

    def __init__(self, pool: KVPool, capacity: int) -> None:
        self.pool, self.capacity = pool, capacity
        self.blocks: list[int] = []  # pool block of positions [i*block_tokens, (i+1)*block_tokens)
        self.tenant = ""  # whose share the blocks count against (the claim of the first reserve)

    def reserve(self, n_positions: int, claim: Claim = NO_TENANT) -> None:
        """Hold blocks for positions 0..n_positions-1 for claim.tenant; KVPoolFull (nothing taken) if the
        pool is short or the tenant over its share (docs/isolation.md), KVPoolTooSmall if the tenant could
        never hold them (more than the pool, or than its kv_blocks limit)."""
        if n_positions > self.capacity:
            raise BackendError(f"KV cache capacity of {self.capacity} positions exceeded ({n_positions})")
        needed = self.pool.blocks_for(n_positions)
        if needed > self.pool.shares.ceiling(claim):
            raise KVPoolTooSmall(f"KV cache memory too small: {n_positions} positions need {needed} blocks, a "
                                 f"tenant may hold {self.pool.shares.ceiling(claim)} of the pool's "
                                 f"{self.pool.n_blocks} (budget {describe_bytes(self.pool.budget_bytes)}, --kv-memory; "
                                 "the tenant's kv_blocks limit; docs/isolation.md)")
        if needed > len(self.blocks):
            if not self.blocks:
                self.tenant = claim.tenant
            self.blocks += self.pool.allocate(needed - len(self.blocks), dataclasses.replace(claim, tenant=self.tenant))

    def truncate(self, length: int) -> None:
        """Forget positions >= length, giving back the blocks no kept position uses."""
        keep = self.pool.blocks_for(length)
        self.pool.release(self.blocks[keep:], self.tenant)
        del self.blocks[keep:]

    def free(self) -> None:
        """Give every block back; the cache holds nothing afterwards."""
        self.truncate(0)

    def slots(self, start: int, end: int) -> np.ndarray:
        """Flat pool slot (block * block_tokens + offset) of positions start..end-1: int64 (end-start,)."""
        positions = np.arange(start, end)
        table = np.asarray(self.blocks, np.int64)
        return table[positions // self.pool.block_tokens] * self.pool.block_tokens + positions % self.pool.block_tokens
