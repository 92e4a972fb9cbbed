"""The paged KV cache's bookkeeping: a per-model pool of fixed-size blocks under a byte budget.

A sequence holds a block table (the pool block of each run of BLOCK_TOKENS positions) and only the
blocks its tokens need; `truncate` and `close` give blocks back. The pool only counts and hands out
block ids: where a block's keys and values live is the backend's business (NumPy: one array per
model indexed by block id). When the pool is full, `allocate` raises KVPoolFull naming the budget;
the scheduler turns that into waiting (within the request's deadline), the direct path into an error.
No block a sequence holds is ever taken from it. Full blocks of known tokens are kept after their
sequences let them go, for the same tenant's next sequences with that prefix (prefix_cache,
docs/prefix_cache.md), until an allocation needs the room: they go first, the allocating tenant's own,
then the least recently used. Blocks are counted per tenant (fair_share), cached ones included: a
tenant over its share cannot take the blocks another active tenant's share needs, and waits instead
(docs/isolation.md).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from host_functions.errors import KVPoolFull, KVPoolTooSmall, QuotaExceeded
from host_functions.fair_share import NO_TENANT, Claim, FairShares, NeverFits, Refused
from host_functions.kv.prefill_gate import PrefillGate
from host_functions.kv.prefix_cache import PrefixIndex

BLOCK_TOKENS = 16  # positions per block: small enough that a sequence wastes < 16 positions
DEFAULT_BUDGET_FRACTION = 0.25  # of the memory available when the model loads
MIN_DEFAULT_BUDGET = 64 << 20


@dataclass(frozen=True)
class PoolStats:
    """Blocks held by sequences now, at most so far, and in all (BLOCK_TOKENS positions each); blocks
    kept for the prefix cache, and prompt positions looked up there and found."""

    blocks_used: int
    blocks_peak: int
    blocks_total: int
    block_tokens: int
    block_bytes: int
    cached_blocks: int = 0
    lookup_tokens: int = 0
    hit_tokens: int = 0


class KVPool:
    """Block ids 0..n_blocks-1 of one model's KV memory; thread-safe."""

    def __init__(self, budget_bytes: int, block_bytes: int, block_tokens: int = BLOCK_TOKENS) -> None:
        """A pool of budget_bytes // block_bytes blocks; QuotaExceeded if not even one fits."""
        self.budget_bytes, self.block_bytes, self.block_tokens = budget_bytes, block_bytes, block_tokens
        self.n_blocks = budget_bytes // block_bytes
        if self.n_blocks < 1:
            raise QuotaExceeded(f"a KV memory budget of {budget_bytes} bytes holds no block "
                                f"({block_bytes} bytes = {block_tokens} positions of every layer)")
        self._free = list(range(self.n_blocks - 1, -1, -1))  # a stack: low ids first
        self._peak = 0
        self.shares = FairShares(self.n_blocks, "KV blocks")
        self.prefix = PrefixIndex(block_tokens)
        self.gate = PrefillGate()  # identical prompts of a tenant prefill once
        self._lock = threading.Lock()
        self.released = threading.Condition(self._lock)  # notified whenever blocks come back

    def blocks_for(self, n_positions: int) -> int:
        return -(-n_positions // self.block_tokens)

    def allocate(self, n: int, claim: Claim = NO_TENANT) -> list[int]:
        """n free block ids for claim.tenant, all or none; KVPoolFull when fewer than n are free or the
        tenant is over its share, KVPoolTooSmall when the tenant could never hold n more."""
        with self._lock:
            self._take_evicting(claim, n)
            taken = [self._free.pop() for _ in range(n)]
            self.prefix.hold(taken)
            self._peak = max(self._peak, self._in_use())
            return taken

    def _take_evicting(self, claim: Claim, n: int) -> None:
        """Count n blocks for claim.tenant, dropping idle cached blocks (its own first) while it is refused:
        it gets whatever it would get if nobody had cached anything. Others' blocks are not dropped for a
        tenant at its own ceiling, which only its own could help."""
        evictable = None
        while True:
            try:
                self.shares.take(claim, n, len(self._free))
                return
            except Refused as exc:
                evictable = self.prefix.evictable(claim.tenant) if evictable is None else evictable
                at_ceiling = self.shares.held(claim.tenant) + n > self.shares.ceiling(claim)
                if not evictable or (at_ceiling and evictable[0][1] != claim.tenant):
                    raise KVPoolFull(f"KV cache memory full: {exc} "
                                     f"(budget {describe_bytes(self.budget_bytes)}, --kv-memory)") from None
                self._free_cached(*evictable.pop(0))
            except NeverFits as exc:
                raise KVPoolTooSmall(f"KV cache memory too small: {exc} "
                                     f"(budget {describe_bytes(self.budget_bytes)}, --kv-memory)") from None

    def _free_cached(self, block: int, tenant: str) -> None:
        self.prefix.evict(block)
        self._free.append(block)
        self.shares.give(tenant, 1)

    def release(self, blocks: list[int], tenant: str = "") -> None:
        """A sequence of `tenant` (truncated or closed) lets blocks go: each is free once nobody holds it,
        unless the prefix cache keeps it."""
        if not blocks:
            return
        with self._lock:
            freed = [b for b in blocks if self.prefix.drop_holder(b, tenant)]
            self.shares.give(tenant, len(freed))
            self._free.extend(reversed(freed))
            self.released.notify_all()

    def take_cached(self, keys: list[bytes], looked_up: int) -> list[int]:
        """The cached blocks of the longest prefix of the chain `keys` (prefix_keys), now also held by the
        caller, who looked up `looked_up` prompt positions; the keys carry the tenant's salt."""
        with self._lock:
            found = self.prefix.take(keys, looked_up)
            self._peak = max(self._peak, self._in_use())
            return found

    def register(self, blocks: list[int], keys: list[bytes]) -> None:
        """Full held blocks whose chain keys are `keys`: later sequences of their tenant may take them."""
        with self._lock:
            for block, key in zip(blocks, keys, strict=True):
                self.prefix.register(block, key)

    def share(self, blocks: list[int]) -> None:
        """Another sequence (a fork) holds `blocks` too."""
        with self._lock:
            self.prefix.hold(blocks)

    def make_writable(self, block: int) -> bool:
        """Whether the holder of `block` may write into it: no other holder (then it leaves the cache)."""
        with self._lock:
            if self.prefix.shared(block):
                return False
            self.prefix.unregister(block)
            return True

    def set_prefix_cache(self, enabled: bool) -> None:
        """Turn prefix reuse on or off; off drops every cached block."""
        with self._lock:
            self.prefix.enabled = enabled
            for block, tenant in [] if enabled else list(self.prefix.idle.items()):
                self._free_cached(block, tenant)
            self.released.notify_all()

    @property
    def prefix_cache(self) -> bool:
        return self.prefix.enabled

    def _in_use(self) -> int:
        return self.n_blocks - len(self._free) - len(self.prefix.idle)

    def stats(self) -> PoolStats:
        with self._lock:
            p = self.prefix.stats
            return PoolStats(self._in_use(), self._peak, self.n_blocks, self.block_tokens, self.block_bytes,
                             len(self.prefix.idle), p.lookup_tokens, p.hit_tokens)

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = self._in_use()


def default_budget() -> int:
    """DEFAULT_BUDGET_FRACTION of the memory available now (Linux MemAvailable), at least MIN_DEFAULT_BUDGET."""
    available = _available_memory()
    return max(MIN_DEFAULT_BUDGET, int(available * DEFAULT_BUDGET_FRACTION)) if available else 1 << 30


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def describe_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def parse_bytes(text: str) -> int:
    """'512M', '2G', '1.5GiB', '100000' -> bytes; ValueError on anything else or a non-positive size."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (s[:-1], s[-1]) if s and s[-1] in units and s[-1] else (s, "")
    value = float(number) * units[unit]
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"not a positive size: {text!r}")
    return int(value)
