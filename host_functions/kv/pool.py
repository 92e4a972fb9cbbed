"""The paged KV cache's bookkeeping: a per-model pool of fixed-size blocks under a byte budget.

A sequence holds a block table (the pool block of each run of BLOCK_TOKENS positions) and only the
blocks its tokens need; `truncate` and `close` give blocks back. The pool only counts and hands out
block ids: where a block's keys and values live is the backend's business (NumPy: one array per
model indexed by block id). When the pool is full, `allocate` raises KVPoolFull naming the budget;
the scheduler turns that into waiting (within the request's deadline), the direct path into an error.
Nothing is ever evicted: a block belongs to its sequence until that sequence lets it go.
Blocks are counted per tenant (fair_share): a tenant over its share cannot take the blocks another
active tenant's share needs, and waits instead (docs/isolation.md).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from host_functions.errors import KVPoolFull, KVPoolTooSmall, QuotaExceeded
from host_functions.fair_share import NO_TENANT, Claim, FairShares, NeverFits, Refused

BLOCK_TOKENS = 16  # positions per block: small enough that a sequence wastes < 16 positions
DEFAULT_BUDGET_FRACTION = 0.25  # of the memory available when the model loads
MIN_DEFAULT_BUDGET = 64 << 20


@dataclass(frozen=True)
class PoolStats:
    """Blocks in use now, at most so far, and in all; BLOCK_TOKENS positions each."""

    blocks_used: int
    blocks_peak: int
    blocks_total: int
    block_tokens: int
    block_bytes: int


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
        self._lock = threading.Lock()
        self.released = threading.Condition(self._lock)  # notified whenever blocks come back

    def blocks_for(self, n_positions: int) -> int:
        return -(-n_positions // self.block_tokens)

    def allocate(self, n: int, claim: Claim = NO_TENANT) -> list[int]:
        """n free block ids for claim.tenant, all or none; KVPoolFull when fewer than n are free or the
        tenant is over its share, KVPoolTooSmall when the tenant could never hold n more."""
        with self._lock:
            try:
                self.shares.take(claim, n, len(self._free))
            except Refused as exc:
                raise KVPoolFull(f"KV cache memory full: {exc} "
                                 f"(budget {describe_bytes(self.budget_bytes)}, --kv-memory)") from None
            except NeverFits as exc:
                raise KVPoolTooSmall(f"KV cache memory too small: {exc} "
                                     f"(budget {describe_bytes(self.budget_bytes)}, --kv-memory)") from None
            taken = [self._free.pop() for _ in range(n)]
            self._peak = max(self._peak, self.n_blocks - len(self._free))
            return taken

    def release(self, blocks: list[int], tenant: str = "") -> None:
        """Give blocks back (a sequence of `tenant` truncated or closed)."""
        if not blocks:
            return
        with self._lock:
            self.shares.give(tenant, len(blocks))
            self._free.extend(reversed(blocks))
            self.released.notify_all()

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(self.n_blocks - len(self._free), self._peak, self.n_blocks, self.block_tokens,
                             self.block_bytes)

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = self.n_blocks - len(self._free)


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
