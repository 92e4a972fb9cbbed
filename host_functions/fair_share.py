"""Fair shares of one shared resource (worker places, KV blocks, adapter bytes) between tenants.

The guarantee (docs/isolation.md): while a tenant is active (it holds some of the resource or waits
for it, or did within the resource's `linger_s`), it can always use at least its share,
`total * weight / sum of the active tenants' weights`, less what it would need beyond its own cap.
What others leave idle may be used by anyone (work-conserving), under two rules that keep the
guarantee:
- a tenant may take units past its share only if what stays free covers every other active
  tenant's unused share (so a tenant over its share never takes the last units another's share needs);
- no tenant holds more than `total - reserve` (reserve: RESERVE_FRACTION of the total), so a tenant
  that becomes active while another holds everything it may still gets the reserve at once, and the
  rest of its share as the others, who cannot grow past their shares meanwhile, give units back.

Units are counted, not owned: the caller hands out the actual units (block ids, worker threads) and
tells `take`/`give` how many a tenant took or gave back. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from host_functions.errors import Overloaded

T = TypeVar("T")

RESERVE_FRACTION = 1 / 8  # of a resource, never held by one tenant: room for a tenant that becomes active
MAX_WEIGHT = 1000
POLL_S = 0.05  # how soon a claim waiting for its share first tries again; then twice as late each time,
MAX_POLL_S = 0.5  # up to this (a try may cost real work: an adapter that did not fit is read again)


@dataclass(frozen=True)
class Claim:
    """Who asks: the tenant, its weight (share_weight) and its own cap on the resource (in units)."""

    tenant: str = ""
    weight: int = 1
    cap: int | None = None


NO_TENANT = Claim()  # the engine used on its own (realm run, the Python API)


class Refused(Exception):
    """A claim that must wait (or be refused for now): its tenant is over its share."""


class NeverFits(Exception):
    """A claim that can never be granted: more than the tenant may ever hold."""


class FairShares:
    """The units of one resource of `total` units each tenant holds, and the rule for taking more."""

    def __init__(self, total: int, what: str, reserve_fraction: float = RESERVE_FRACTION,
                 linger_s: float = 0.0) -> None:
        """`what` names the resource and its unit in messages, e.g. "KV blocks". A tenant stays active
        for `linger_s` after it last held or waited for units: a client sending one request after
        another is briefly between them, and its share must not go to a backlog meanwhile."""
        self.total, self.what, self.linger_s = total, what, linger_s
        self.reserve = int(total * reserve_fraction)
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._weights: dict[str, int] = {}  # of every active tenant
        self._waiting: Counter[str] = Counter()  # claims waiting, per tenant (they count as active)
        self._idle_since: dict[str, float] = {}  # active tenants holding and waiting for nothing (linger)

    def ceiling(self, claim: Claim) -> int:
        """The most units `claim`'s tenant may ever hold at once (no tenant, "": the engine used on its
        own, as by `realm run`, may use the reserve too)."""
        most = self.total - self.reserve if claim.tenant else self.total
        return most if claim.cap is None else min(most, claim.cap)

    def share(self, claim: Claim) -> int:
        """The units `claim`'s tenant is guaranteed now (its weight among the active tenants')."""
        with self._lock:
            self._forget_lingering()
            return self._share(claim)

    def held(self, tenant: str) -> int:
        with self._lock:
            return self._held[tenant]

    def holders(self) -> dict[str, int]:
        """Units held, by tenant (only tenants holding some)."""
        with self._lock:
            return {t: n for t, n in self._held.items() if n}

    def take(self, claim: Claim, n: int, free: int) -> None:
        """Count n more units as held by claim.tenant, given `free` units free now (before taking).

        Raises NeverFits if the tenant could never hold that many, Refused if taking them now would
        break another active tenant's share or pass the free units (nothing is counted then).
        """
        with self._lock:
            self._check(claim, n, free)
            self._held[claim.tenant] += n
            self._activate(claim)

    def check(self, claim: Claim, n: int, free: int) -> None:
        """What `take` would raise now, without taking anything."""
        with self._lock:
            self._check(claim, n, free)

    def _check(self, claim: Claim, n: int, free: int) -> None:
        self._forget_lingering()
        held, ceiling = self._held[claim.tenant], self.ceiling(claim)
        if n > ceiling:
            raise NeverFits(f"{n} {self.what} are more than a tenant may hold at once ({ceiling} of "
                            f"{self.total}{'' if claim.cap is None else ', its own limit'})")
        if n > free:
            raise Refused(f"{n} more {self.what} needed, {free} of {self.total} free")
        if held + n > ceiling:
            raise Refused(f"tenant {claim.tenant!r} holds {held} {self.what}; {n} more would pass the "
                          f"{ceiling} it may hold at once")
        if held + n > self._share(claim) and free - n < self._unused_shares(claim.tenant):
            raise Refused(f"tenant {claim.tenant!r} is over its share of {self.what} ({held} held, "
                          f"share {self._share(claim)} of {self.total}); the rest is kept for other tenants")

    def give(self, tenant: str, n: int) -> None:
        """claim.tenant gave n units back."""
        with self._lock:
            self._held[tenant] = max(0, self._held[tenant] - n)
            self._forget_if_idle(tenant)

    def wait(self, claim: Claim) -> None:
        """A claim of claim.tenant waits for units: the tenant counts as active meanwhile."""
        with self._lock:
            self._waiting[claim.tenant] += 1
            self._activate(claim)

    def done_waiting(self, tenant: str) -> None:
        with self._lock:
            self._waiting[tenant] = max(0, self._waiting[tenant] - 1)
            self._forget_if_idle(tenant)

    def _activate(self, claim: Claim) -> None:
        self._weights[claim.tenant] = claim.weight
        self._idle_since.pop(claim.tenant, None)

    def _share(self, claim: Claim) -> int:
        weights = dict(self._weights)
        weights[claim.tenant] = claim.weight
        return min(self.ceiling(claim), self.total * claim.weight // sum(weights.values()))

    def _unused_shares(self, tenant: str) -> int:
        """Units the other active tenants' shares still need."""
        return sum(max(0, self._share(Claim(other, weight)) - self._held[other])
                   for other, weight in self._weights.items() if other != tenant)

    def _forget_if_idle(self, tenant: str) -> None:
        if not self._held[tenant] and not self._waiting[tenant]:
            self._idle_since[tenant] = time.monotonic()
            self._forget_lingering()

    def _forget_lingering(self) -> None:
        """Tenants idle for linger_s or longer stop being active."""
        now = time.monotonic()
        for tenant in [t for t, since in self._idle_since.items() if now - since >= self.linger_s]:
            del self._idle_since[tenant]
            self._held.pop(tenant, None)
            self._waiting.pop(tenant, None)
            self._weights.pop(tenant, None)


class Charges:
    """Bytes of shared cache entries (adapters, merged LoRA copies) charged to the tenants holding them,
    within their fair shares of the cache's budget: once per tenant and entry however many of its
    requests hold it; an entry two tenants hold is charged to both (each would need it alone)."""

    def __init__(self, budget_bytes: int, what: str) -> None:
        self.shares = FairShares(budget_bytes, what)
        self._lock = threading.Lock()
        self._holds: Counter[tuple[str, object]] = Counter()  # (tenant, entry key) -> its holders

    def charge(self, claim: Claim, key: object, nbytes: int) -> None:
        """One more holder of `key` for claim.tenant; NeverFits or Refused (nothing charged) when the
        entry's first charge to the tenant does not fit its share."""
        with self._lock:
            if not self._holds[(claim.tenant, key)]:
                free = self.shares.total - sum(self.shares.holders().values())
                self.shares.take(claim, nbytes, max(0, free))
            self._holds[(claim.tenant, key)] += 1

    def discharge(self, tenant: str, key: object, nbytes: int) -> None:
        """One holder of `key` of `tenant` is done; the last one gives the tenant's charge back."""
        with self._lock:
            if not self._holds[(tenant, key)]:
                return
            self._holds[(tenant, key)] -= 1
            if not self._holds[(tenant, key)]:
                del self._holds[(tenant, key)]
                self.shares.give(tenant, nbytes)


def waiting(attempt: Callable[[], T], shares: FairShares, claim: Claim, give_up: Callable[[], bool]) -> T:
    """attempt(), tried again (after POLL_S, backing off to MAX_POLL_S) while it raises Overloaded
    (claim.tenant is over its share of `shares`, or the resource is full now), the tenant counting as
    active there meanwhile, so that its share comes back to it as others give units back. Raises the
    last Overloaded once give_up() is true (the caller's deadline, a cancellation), and whatever else
    attempt() raises."""
    counted, pause = False, POLL_S
    try:
        while True:
            try:
                return attempt()
            except Overloaded:
                if give_up():
                    raise
                if not counted:
                    shares.wait(claim)
                    counted = True
                time.sleep(pause)
                pause = min(2 * pause, MAX_POLL_S)
    finally:
        if counted:
            shares.done_waiting(claim.tenant)
