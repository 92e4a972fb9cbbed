"""A sequence's block table: which blocks of the model's KV pool hold its positions."""

from __future__ import annotations

import dataclasses

import numpy as np

from host_functions.errors import BackendError, KVPoolTooSmall
from host_functions.fair_share import NO_TENANT, Claim
from host_functions.kv.pool import KVPool, describe_bytes
from host_functions.kv.prefix_keys import block_keys


class KVCache:
    """One sequence's block table in the model's KV pool, for at most `capacity` positions.

    Blocks are taken from the pool by `reserve` (before a step writes new positions), from the
    prefix cache by `take_prefix` or from another sequence by `fork`, and given back by `truncate`
    and `free`. Full blocks may be shared (docs/prefix_cache.md): they are never written again, and a
    truncation into a shared one drops it (the caller recomputes what it held).
    """

    def __init__(self, pool: KVPool, capacity: int) -> None:
        self.pool, self.capacity = pool, capacity
        self.blocks: list[int] = []  # pool block of positions [i*block_tokens, (i+1)*block_tokens)
        self.tenant = ""  # whose share the blocks count against (the claim of the first reserve)
        self.keys: list[bytes] = []  # chain keys of the first full blocks (prefix_keys), registered

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

    def take_prefix(self, keys: list[bytes], looked_up: int, tenant: str) -> int:
        """Into an empty table, the cached blocks of `tenant` of the longest prefix of the chain `keys`
        (prefix_keys.block_keys of a prompt of `looked_up` positions); the positions taken."""
        found = self.pool.take_cached(keys, looked_up)
        self.tenant, self.blocks, self.keys = tenant, found, keys[:len(found)]
        return len(found) * self.pool.block_tokens

    def register(self, start: bytes, tokens: list[int]) -> None:
        """Offer the full blocks of `tokens` (all held here) not yet offered to the prefix cache."""
        if not self.pool.prefix_cache:
            return
        new = block_keys(self.keys[-1] if self.keys else start, tokens, self.pool.block_tokens, len(self.keys))
        self.pool.register(self.blocks[len(self.keys):len(self.keys) + len(new)], new)
        self.keys += new

    def fork(self, length: int) -> KVCache:
        """A new table sharing this one's full blocks among positions 0..length-1 (what it holds is
        `len(blocks) * block_tokens` positions; the caller recomputes the rest)."""
        child = type(self)(self.pool, self.capacity)
        full = length // self.pool.block_tokens
        child.tenant, child.blocks, child.keys = self.tenant, self.blocks[:full], self.keys[:full]
        self.pool.share(child.blocks)
        return child

    def truncate(self, length: int) -> int:
        """Forget positions >= length, giving back the blocks no kept position uses; returns the
        positions kept: `length`, or the start of its block when that block is shared (it is dropped)."""
        bt = self.pool.block_tokens
        keep = self.pool.blocks_for(length)
        if length % bt and keep <= len(self.blocks) and not self.pool.make_writable(self.blocks[keep - 1]):
            keep -= 1
        self.pool.release(self.blocks[keep:], self.tenant)
        del self.blocks[keep:]
        del self.keys[min(length // bt, keep):]
        return min(length, keep * bt)

    def free(self) -> None:
        """Give every block back; the cache holds nothing afterwards."""
        self.truncate(0)

    def slots(self, start: int, end: int) -> np.ndarray:
        """Flat pool slot (block * block_tokens + offset) of positions start..end-1: int64 (end-start,)."""
        positions = np.arange(start, end)
        table = np.asarray(self.blocks, np.int64)
        return table[positions // self.pool.block_tokens] * self.pool.block_tokens + positions % self.pool.block_tokens
