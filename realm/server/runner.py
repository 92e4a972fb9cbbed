"""Guest runs for the server: each on a worker thread of a bounded pool, its text streamed back to
the event loop as the guest emits it, and a cancellation flag the sandbox checks at every host call.

A request's steps are batched with every other live request's by the model's scheduler (each run
is an ordinary sandbox run on its own thread); this module moves text and outcomes between threads,
keeps the set of live runs (so shutdown can wait for them or end them) and shares the places fairly
(docs/isolation.md): a tenant's runs are admitted within its fair share of the places (workers plus
queue), and a free worker takes the next run of the tenant with the fewest running runs for its
weight, so one tenant's backlog never queues another's requests behind it. The workers are a fair
share too (fair_share): no tenant runs on all of them (an eighth, at least one, is kept for a tenant
arriving while another's long runs hold the rest), and a tenant running on more than its share
starts no new run while another waiting tenant's share needs the worker, nor while one whose run
ended less than LINGER_S ago may send its next.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from host_functions.abi import TokenLogprob
from host_functions.engine.model import Model
from host_functions.errors import QuotaExceeded, RequestCancelled
from host_functions.fair_share import RESERVE_FRACTION, Claim, FairShares, NeverFits, Refused
from realm.request.spec import RunRequest
from realm.sandbox.report import RunResult

COALESCE_S = 0.01  # how long text a guest emits may wait to join the next before it is streamed
# A tenant keeps its share of the workers this long after its last run ended: its client's next
# request is on its way, and a run another tenant's backlog starts meanwhile would hold the worker
# for that run's whole length (runs are never preempted).
LINGER_S = 0.5


@dataclass(frozen=True)
class Piece:
    """What a run produced since the last piece: its text and the logprobs of the tokens it reported."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(eq=False)
class GuestRun:
    """One guest run in flight: the pieces it produced so far (a queue), its outcome and its cancel flag."""

    tenant: str
    pieces: asyncio.Queue[Piece] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: asyncio.Future[RunResult] | None = None

    async def stream(self) -> AsyncIterator[Piece]:
        """Every piece in order, as it arrives, until the run ends (its outcome is then set)."""
        assert self.outcome is not None
        while True:
            getter = asyncio.ensure_future(self.pieces.get())
            waiting: set[asyncio.Future[Any]] = {getter, self.outcome}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            # The worker queued its last pieces before it finished, so they are here already.
            while not self.pieces.empty():
                yield self.pieces.get_nowait()
            return

    async def result(self) -> RunResult:
        """The run's RunResult; raises what the run raised (a GuestRunFailed, RequestCancelled)."""
        assert self.outcome is not None
        return await asyncio.shield(self.outcome)


@dataclass(eq=False)
class _Job:
    tenant: str
    weight: int
    work: Callable[[], RunResult]
    future: Future[RunResult]
    deadline: float  # time.monotonic(): a run still waiting for a worker then fails
    order: int  # arrival, for ties between tenants

    @property
    def claim(self) -> Claim:
        return Claim(self.tenant, self.weight)


class Runner:
    """Runs tenants' guests on `workers` threads, each run against the model it names (the server's
    models share the workers and places); at most workers + max_queue runs at once, each tenant within
    its fair share of them."""

    def __init__(self, workers: int, max_queue: int = 0) -> None:
        self.workers = workers
        self.places = FairShares(workers + max_queue, "runs (worker and queue places)")
        self.threads = FairShares(workers, "workers", max(RESERVE_FRACTION, 1 / workers) if workers > 1 else 0,
                                  linger_s=LINGER_S)
        self._live: set[GuestRun] = set()
        self._cond = threading.Condition()
        self._pending: dict[str, deque[_Job]] = {}
        self._running: Counter[str] = Counter()
        self._arrivals = itertools.count()
        self._closing = False
        self._threads = [threading.Thread(target=self._work, name=f"realm-request-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def live(self) -> int:
        """Runs started and not finished (running or waiting for a thread)."""
        return len(self._live)

    def start(self, requests: list[RunRequest], claim: Claim, model: Model) -> list[GuestRun]:
        """Queue the runs of one client request (all or none) on `model`; call from the event loop. Their text
        arrives on `.stream()`. Raises GuestError for limits that do not validate, fair_share.NeverFits
        when the tenant could never have that many runs at once, fair_share.Refused when it is over its
        share of the places now (docs/isolation.md), before anything is queued."""
        for request in requests:
            request.limits.validate()
        self.places.take(claim, len(requests), self.places.total - self.places_held())
        return [self._start(request, claim, model) for request in requests]

    def check(self, claim: Claim, n: int) -> None:
        """What `start` would raise for n runs of claim.tenant now (fair_share.NeverFits, Refused)."""
        self.places.check(claim, n, self.places.total - self.places_held())

    def places_held(self) -> int:
        return sum(self.places.holders().values())

    def _start(self, request: RunRequest, claim: Claim, model: Model) -> GuestRun:
        loop = asyncio.get_running_loop()
        run = GuestRun(request.tenant)

        waiting: list[str | TokenLogprob] = []  # text and logprobs since the loop last took them
        lock = threading.Lock()

        def produced(item: str | TokenLogprob) -> None:
            # The loop takes what came at most once per COALESCE_S, however often the guest emits: one
            # piece (one SSE event) per batch, not one per emit call (a guest may emit byte by byte).
            with lock:
                waiting.append(item)
                if len(waiting) > 1:
                    return  # a take() is already scheduled and will collect this too
            loop.call_soon_threadsafe(loop.call_later, COALESCE_S, take)

        def take() -> None:
            with lock:
                piece = Piece("".join(i for i in waiting if isinstance(i, str)),
                              tuple(i for i in waiting if isinstance(i, TokenLogprob)))
                waiting.clear()
            if piece.text or piece.logprobs:
                run.pieces.put_nowait(piece)

        def work() -> RunResult:
            try:
                if run.cancel.is_set():  # the client left while the run waited for a thread
                    raise RequestCancelled("the client cancelled the request")
                return request.run(model, on_text=produced, cancel=run.cancel, on_logprob=produced)
            finally:
                loop.call_soon_threadsafe(take)  # the last text, queued before the outcome is set

        def finished(outcome: asyncio.Future[RunResult]) -> None:
            self._live.discard(run)
            self.places.give(claim.tenant, 1)
            if not outcome.cancelled():
                outcome.exception()  # a run whose client left is never awaited: its error is expected

        future: Future[RunResult] = Future()
        job = _Job(claim.tenant, claim.weight, work, future, time.monotonic() + request.limits.wall_seconds,
                   next(self._arrivals))
        with self._cond:
            self._pending.setdefault(claim.tenant, deque()).append(job)
            self.threads.wait(claim)  # its tenant is active for the workers' shares meanwhile
            self._cond.notify()
        run.outcome = asyncio.wrap_future(future)
        self._live.add(run)
        run.outcome.add_done_callback(finished)
        return run

    def _work(self) -> None:
        while True:
            with self._cond:
                while (job := self._next()) is None:
                    if self._closing:
                        return
                    # a run held back for a lingering tenant may start once that tenant's linger ends
                    self._cond.wait(LINGER_S if self._pending else None)
            try:
                _run_job(job)
            finally:
                with self._cond:
                    self._running[job.tenant] -= 1
                    self.threads.give(job.tenant, 1)
                    self._cond.notify_all()  # a tenant held back by the shares may start a run now

    def _next(self) -> _Job | None:
        """The next run, counted as running: the oldest of the tenant with the fewest running runs for
        its weight whose share of the workers allows it; None if there is none."""
        idle = self.workers - sum(self._running.values())
        for tenant in sorted(self._pending, key=lambda t: (self._running[t] / self._pending[t][0].weight,
                                                            self._pending[t][0].order)):
            job = self._pending[tenant][0]
            try:
                self.threads.take(job.claim, 1, idle)
            except (Refused, NeverFits):
                continue
            self._pending[tenant].popleft()
            if not self._pending[tenant]:
                del self._pending[tenant]
            self.threads.done_waiting(tenant)
            self._running[tenant] += 1
            return job
        return None

    def cancel_all(self) -> None:
        """End every live run at its next host call (shutdown after the drain timeout)."""
        for run in list(self._live):
            run.cancel.set()

    def close(self) -> None:
        """Cancel what is left and wait for the worker threads."""
        self.cancel_all()
        with self._cond:
            for queue in self._pending.values():
                for job in queue:
                    job.future.cancel()
            self._pending.clear()
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()


def _run_job(job: _Job) -> None:
    if not job.future.set_running_or_notify_cancel():
        return
    try:
        if time.monotonic() > job.deadline:
            raise QuotaExceeded("request passed its deadline waiting for a worker")
        job.future.set_result(job.work())
    except BaseException as exc:  # noqa: BLE001  the run's outcome, awaited on the event loop
        job.future.set_exception(exc)
