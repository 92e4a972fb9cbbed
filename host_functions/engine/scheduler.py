"""Continuous batching: one scheduler thread per model runs the steps of every live sequence together.

A request's thread hands its sequence's step (a StepItem: new tokens, position, KV cache, wanted
logits) to `Scheduler.run` when the guest finishes the step (seq_finish) and waits for the logits.
The loop gathers what is queued, picks a batch, reserves its KV blocks, runs one `Backend.step`
over all of it and hands each request its result. Sequences join and leave between steps.

Choosing a batch (docs/scheduler.md has the reasoning):
- at most `max_batch` items and `token_budget` tokens per step (a decode step is 1 token, a prefill
  chunk up to host_functions.engine.model.PREFILL_CHUNK);
- deficit round robin by tenant: each round gives every tenant with queued work a quantum of
  token_budget / n_tenants tokens, carried over (capped) between steps, and the starting tenant
  rotates; so a tenant flooding the model with requests or a long prompt gets its share, never all;
- an item whose KV blocks the pool cannot supply now stays queued (it waits for blocks, within its
  request's deadline; one that needs more than the whole pool fails at once); no held block is
  evicted (only the prefix cache's idle ones, docs/prefix_cache.md);
- step time is shared too (docs/isolation.md): while a tenant decodes beside another tenant's prefill
  (a step of at most DECODE_ROWS tokens is queued, or ran in the last DECODE_LINGER_S: its guest may
  be sampling the next token while the step is chosen), a step carries at most `prefill_cap` prefill
  tokens (a tenant alone keeps whole chunks: nobody else's latency is at stake), a longer
  prefill chunk running its head now and its tail in later steps, so a long prompt slows other
  tenants' decoding by a bounded amount; while two or more tenants use the model, a step carries at
  most `shared_prefill_cap` prefill tokens even when nobody decodes, so a tenant arriving while
  another's long prompt is being read waits for a short step, not a full one. Attention runs per
  query, so how a chunk is cut never changes a logit (docs/scheduler.md, batch invariance);
- after a step the loop waits a little (at most GATHER_FRACTION of the last step's time, less when
  every item of the last step is back) so lockstep decoders share the next step, but it never waits
  longer than that for a guest that is busy in its own code.

A waiting request leaves at its deadline or when its owner's should_stop() turns true (a cancelled
server request): a queued step is withdrawn; a running one finishes first (so its cache is never
freed under the backend) and the request then fails. Nobody else's step is touched.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from host_functions.backends.base import Backend, StepItem
from host_functions.errors import KVPoolFull, KVPoolTooSmall, Overloaded, QuotaExceeded, RequestCancelled
from host_functions.fair_share import Claim

DEFAULT_TOKEN_BUDGET = 256
DEFAULT_MAX_BATCH = 32
DEFAULT_PREFILL_CAP = 4  # prefill tokens per step while some sequence decodes (docs/isolation.md)
# Prefill tokens per step while two or more tenants use the model (one of them may start decoding at
# any moment, and a step in flight is never cut: it waits for the whole step). One tenant alone (as
# `realm run`) prefills at full token_budget steps.
DEFAULT_SHARED_PREFILL_CAP = 32
DECODE_ROWS = 8  # a step of at most this many tokens is decoding (speculative verification included)
DECODE_LINGER_S = 1.0  # a sequence that decoded this recently is still decoding (its guest is sampling)
GATHER_FRACTION = 0.25  # of the last step's time: the most the loop waits for last step's items to return
POLL_S = 0.02  # how often a waiting request looks at its deadline and should_stop()
_MAX_ROUNDS = 64


def _never() -> bool:
    return False


@dataclass(frozen=True)
class StepOwner:
    """Who a step is for: the scheduler's fair share is per tenant (with its weight, and its cap on
    KV blocks), and it stops waiting for the step at the deadline (time.monotonic()) or once
    should_stop() is true."""

    tenant: str = ""
    deadline: float = math.inf
    should_stop: Callable[[], bool] = field(default=_never, compare=False)
    weight: int = 1
    kv_blocks: int | None = None

    @property
    def kv_claim(self) -> Claim:
        return Claim(self.tenant, self.weight, self.kv_blocks)


@dataclass(eq=False)
class _Ticket:
    item: StepItem
    owner: StepOwner
    done: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued -> running -> done, or queued -> withdrawn
    result: np.ndarray | None = None
    error: BaseException | None = None
    kv_wait: KVPoolFull | None = None  # why it was last left out of a step
    head: StepItem | None = None  # the part of `item` running now, when it runs in parts (prefill_cap)


@dataclass
class SchedulerStats:
    """What the loop did: steps run, items and tokens per step, the largest batch, KV blocks."""

    steps: int = 0
    items: int = 0
    tokens: int = 0
    max_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # items per step -> how many steps

    @property
    def mean_batch(self) -> float:
        return self.items / self.steps if self.steps else 0.0


class Scheduler:
    """The step runner of one model: batches every sequence's steps on one thread."""

    def __init__(self, backend: Backend, name: str, token_budget: int = DEFAULT_TOKEN_BUDGET,
                 max_batch: int = DEFAULT_MAX_BATCH, prefill_cap: int = DEFAULT_PREFILL_CAP) -> None:
        self.backend, self.name = backend, name  # the name labels the loop's thread
        self.token_budget, self.max_batch, self.prefill_cap = token_budget, max_batch, prefill_cap
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Ticket]] = {}  # tenant -> its queued steps, oldest first
        self._deficit: dict[str, int] = {}
        self._order: deque[str] = deque()  # tenants in round-robin order
        self._thread: threading.Thread | None = None
        self._closing = False  # close(): the loop's thread ends once nothing is queued
        self._awaited: set[int] = set()  # caches of the last step's items whose next steps may be on their way
        self._gather_until = 0.0
        self._decoded_at: dict[str, float] = {}  # tenant -> time.monotonic() of its last decoding step chosen
        self.shared_prefill_cap = DEFAULT_SHARED_PREFILL_CAP
        self._tenants_seen: dict[str, float] = {}  # tenant -> time.monotonic() it last queued a step

    # ---- the request side ------------------------------------------------------------------------

    def run(self, item: StepItem, owner: StepOwner) -> np.ndarray | None:
        """Queue one sequence's step, wait for it, return its logits (see StepItem.wants).

        Raises QuotaExceeded at owner.deadline (Overloaded, naming the KV budget or the tenant's
        share, if the step was waiting for blocks), RequestCancelled once owner.should_stop() is true,
        and whatever the backend raised.
        """
        ticket = _Ticket(item, owner)
        with self._cond:
            self._start()
            self._enqueue(ticket)
            self._awaited.discard(id(item.cache))
            self._cond.notify_all()
        while not ticket.done.wait(POLL_S):
            reason = self._why_leave(ticket)
            if reason is None:
                continue
            with self._cond:
                if ticket.state == "queued":
                    self._queues[owner.tenant].remove(ticket)
                    self._stop_waiting(ticket)
                    ticket.state = "withdrawn"
            if ticket.state == "withdrawn":
                raise reason
            # Its step (or a part of it) is running and owns its blocks until it ends: look again then.
        if ticket.error is not None:
            raise ticket.error
        return ticket.result

    def _enqueue(self, ticket: _Ticket, first: bool = False) -> None:
        tenant = ticket.owner.tenant
        self._tenants_seen[tenant] = time.monotonic()
        if tenant not in self._queues:
            self._queues[tenant] = deque()
            self._deficit[tenant] = 0
            self._order.append(tenant)
        if first:
            self._queues[tenant].appendleft(ticket)
        else:
            self._queues[tenant].append(ticket)

    @staticmethod
    def _stop_waiting(ticket: _Ticket) -> None:
        """The ticket no longer waits for KV blocks (its tenant may stop counting as active there)."""
        if ticket.kv_wait is not None:
            ticket.item.cache.pool.shares.done_waiting(ticket.owner.tenant)
            ticket.kv_wait = None

    def _why_leave(self, ticket: _Ticket) -> BaseException | None:
        if ticket.owner.should_stop():
            return RequestCancelled("request cancelled while waiting for its step")
        if time.monotonic() >= ticket.owner.deadline:
            if ticket.kv_wait is not None:  # others hold the blocks: retrying later can succeed
                return Overloaded(f"request passed its deadline waiting for KV memory: {ticket.kv_wait}")
            return QuotaExceeded("request passed its deadline waiting for its step")
        return None

    # ---- the loop --------------------------------------------------------------------------------

    def _start(self) -> None:
        self._closing = False
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=f"realm-scheduler-{self.name}",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """End the loop's thread once no step is queued (its model is being unloaded), and wait for it;
        a later run starts a new one."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if not batch:
                    return
            started = time.perf_counter()
            self._execute(batch)
            elapsed = time.perf_counter() - started
            with self._cond:
                self._awaited = {id(t.item.cache) for t in batch}
                self._gather_until = time.monotonic() + GATHER_FRACTION * elapsed

    def _next_batch(self) -> list[_Ticket]:
        """Wait (holding the condition) until a batch can be formed; mark it running. [] once closed and
        nothing is queued."""
        while True:
            queued = sum(len(q) for q in self._queues.values())
            if not queued and self._closing:
                return []
            if not queued:
                self._cond.wait()
                continue
            if self._awaited and time.monotonic() < self._gather_until:
                self._cond.wait(max(0.0, self._gather_until - time.monotonic()))
                continue
            self._awaited.clear()
            batch = self._select()
            if batch:
                return batch
            self._cond.wait(POLL_S)  # all queued steps wait for KV blocks: look again when some may be free

    def _select(self) -> list[_Ticket]:
        """Deficit round robin by tenant under the step's token, item and prefill budgets."""
        batch: list[_Ticket] = []
        budget = self.token_budget
        prefill = (self.prefill_cap if self._decoding()
                   else self.shared_prefill_cap if self._shared() else self.token_budget)
        blocked: set[str] = set()
        self._order.rotate(-1)
        for _ in range(_MAX_ROUNDS):
            active = [t for t in self._order if self._queues[t] and t not in blocked]
            if not active or budget <= 0 or len(batch) >= self.max_batch:
                break
            quantum = max(1, self.token_budget // len(active))
            for tenant in active:
                queue = self._queues[tenant]
                self._deficit[tenant] = min(self._deficit[tenant] + quantum, self.token_budget)
                while queue and len(batch) < self.max_batch:
                    ticket = queue[0]
                    step = self._part(ticket.item, prefill)
                    cost = len(step.tokens)
                    if cost == 0 or (batch and cost > budget):
                        blocked.add(tenant)
                        break
                    if batch and cost > self._deficit[tenant]:
                        break
                    try:
                        step.cache.reserve(step.pos + cost, ticket.owner.kv_claim)
                    except Exception as exc:  # noqa: BLE001  a step that cannot be placed
                        if isinstance(exc, KVPoolFull) and not isinstance(exc, KVPoolTooSmall):
                            if ticket.kv_wait is None:
                                step.cache.pool.shares.wait(ticket.owner.kv_claim)  # its tenant is active there
                            ticket.kv_wait = exc  # it waits for blocks, and its tenant for it
                            blocked.add(tenant)
                            break
                        self._stop_waiting(ticket)
                        _finish(queue.popleft(), None, exc)  # it can never run (larger than its share, ...)
                        continue
                    self._stop_waiting(ticket)
                    queue.popleft()
                    ticket.state, ticket.head = "running", (None if step is ticket.item else step)
                    batch.append(ticket)
                    self._deficit[tenant] = max(0, self._deficit[tenant] - cost)
                    budget -= cost
                    if len(ticket.item.tokens) > DECODE_ROWS:  # a prefill (or its head)
                        prefill -= cost
                    else:
                        self._decoded_at[tenant] = time.monotonic()
                if not queue:
                    self._deficit[tenant] = 0
        self._forget_idle_tenants()
        return batch

    def _decoding(self) -> bool:
        """Whether a tenant decodes beside another tenant's prefill (then prefill is capped per step).
        A tenant alone, prefilling a new prompt right after its own decoding, keeps whole chunks."""
        now = time.monotonic()
        for tenant in [t for t, at in self._decoded_at.items() if now - at >= DECODE_LINGER_S]:
            del self._decoded_at[tenant]
        decoders = set(self._decoded_at)
        prefillers: set[str] = set()
        for tenant, queue in self._queues.items():
            for ticket in queue:
                (decoders if len(ticket.item.tokens) <= DECODE_ROWS else prefillers).add(tenant)
        return bool(decoders) and bool(prefillers) and len(decoders | prefillers) > 1

    def _shared(self) -> bool:
        """Whether two or more tenants queued steps in the last DECODE_LINGER_S."""
        now = time.monotonic()
        for tenant in [t for t, at in self._tenants_seen.items() if now - at >= DECODE_LINGER_S]:
            del self._tenants_seen[tenant]
        return len(self._tenants_seen) > 1

    @staticmethod
    def _part(item: StepItem, prefill: int) -> StepItem:
        """What of `item` may run in this step: all of it, or, for a prefill chunk longer than the
        prefill tokens left, its head (which wants no logits; the rest runs in later steps). A chunk
        that wants every position's logits (speculative verification) or hidden state is never cut."""
        if len(item.tokens) <= max(prefill, DECODE_ROWS) or item.wants in ("all", "hidden"):
            return item
        return dataclasses.replace(item, tokens=item.tokens[:max(prefill, 0)], wants="none")

    def _forget_idle_tenants(self) -> None:
        for tenant in [t for t in self._order if not self._queues[t] and not self._deficit[t]]:
            self._order.remove(tenant)
            del self._queues[tenant], self._deficit[tenant]

    def _execute(self, batch: list[_Ticket]) -> None:
        items = [t.item if t.head is None else t.head for t in batch]
        results: list[np.ndarray | None] = [None] * len(batch)
        error: BaseException | None = None
        try:
            with self.backend.step_lock:
                results = self.backend.step(items)
        except BaseException as exc:  # noqa: BLE001  the step's error belongs to every request in it
            error = exc
        stats = self.stats
        stats.steps += 1
        stats.items += len(batch)
        stats.tokens += sum(len(item.tokens) for item in items)
        stats.max_batch = max(stats.max_batch, len(batch))
        stats.batch_sizes[len(batch)] = stats.batch_sizes.get(len(batch), 0) + 1
        for ticket, result in zip(batch, results, strict=True):
            if ticket.head is not None and error is None:
                self._requeue_rest(ticket)
            else:
                _finish(ticket, result, error)

    def _requeue_rest(self, ticket: _Ticket) -> None:
        """The head of a ticket's step ran: the rest goes first in its tenant's queue."""
        assert ticket.head is not None
        done = len(ticket.head.tokens)
        ticket.item = dataclasses.replace(ticket.item, tokens=ticket.item.tokens[done:], pos=ticket.item.pos + done)
        with self._cond:
            ticket.head, ticket.state = None, "queued"
            self._enqueue(ticket, first=True)
            self._cond.notify_all()


def _finish(ticket: _Ticket, result: np.ndarray | None, error: BaseException | None) -> None:
    ticket.result, ticket.error, ticket.state = result, error, "done"
    ticket.done.set()
