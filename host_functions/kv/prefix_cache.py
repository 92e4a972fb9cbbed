"""The KV pool's prefix cache: which blocks hold a known chain of tokens, who shares them, and which
are kept after their last sequence let them go (least recently used first out).

A block is shared by reference count: each sequence holding it counts once. A full block whose key
(prefix_keys) is registered can be taken by a new sequence of the same tenant (the key holds the
tenant's salt). When its last holder lets it go it stays, idle, still counted against its tenant's
share of the pool (the tenant's `held`), until the pool needs the room: `evictable` names the idle
blocks to drop, the tenant's own first. Not thread-safe: KVPool calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class PrefixStats:
    """Prompt positions looked up in the cache and found there."""

    lookup_tokens: int = 0
    hit_tokens: int = 0


class PrefixIndex:
    """Reference counts, registered keys and idle (cached, unheld) blocks of one pool."""

    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.enabled = True
        self.refs: dict[int, int] = {}  # block -> sequences holding it (absent: free)
        self._by_key: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self.idle: OrderedDict[int, str] = OrderedDict()  # cached unheld block -> its tenant, oldest first
        self.stats = PrefixStats()

    def hold(self, blocks: list[int]) -> None:
        """Newly allocated blocks, or shared ones gaining a holder."""
        for b in blocks:
            self.refs[b] = self.refs.get(b, 0) + 1

    def take(self, keys: list[bytes], looked_up: int) -> list[int]:
        """The cached blocks of the longest prefix of `keys`, each gaining a holder (out of the idle
        list); counts `looked_up` prompt positions and the hits."""
        found: list[int] = []
        for key in keys if self.enabled else []:
            block = self._by_key.get(key)
            if block is None:
                break
            found.append(block)
        for b in found:
            self.idle.pop(b, None)
        self.hold(found)
        self.stats.lookup_tokens += looked_up
        self.stats.hit_tokens += len(found) * self.block_tokens
        return found

    def register(self, block: int, key: bytes) -> None:
        """`block` (held, full) holds the chain `key`; a key already cached keeps its block."""
        if self.enabled and key not in self._by_key and block not in self._key_of:
            self._by_key[key], self._key_of[block] = block, key

    def unregister(self, block: int) -> None:
        key = self._key_of.pop(block, None)
        if key is not None:
            del self._by_key[key]

    def drop_holder(self, block: int, tenant: str) -> bool:
        """One holder lets `block` go; True when it is free now (False: still held, or cached idle)."""
        self.refs[block] -= 1
        if self.refs[block]:
            return False
        del self.refs[block]
        if block in self._key_of:
            self.idle[block] = tenant
            return False
        return True

    def shared(self, block: int) -> bool:
        """Whether writing into `block` could change what someone else reads (another holder or a key)."""
        return self.refs.get(block, 0) > 1

    def evictable(self, tenant: str) -> list[tuple[int, str]]:
        """Idle cached blocks in eviction order: `tenant`'s own first, then everyone's, oldest first."""
        own = [(b, t) for b, t in self.idle.items() if t == tenant]
        return own + [(b, t) for b, t in self.idle.items() if t != tenant]

    def evict(self, block: int) -> None:
        del self.idle[block]
        self.unregister(block)

