"""Guest runs for the server: each on a worker thread of a bounded pool, its text streamed back to
the event loop as the guest emits it, and a cancellation flag the sandbox checks at every host call.

A request's steps are batched with every other live request's by the model's scheduler (each run
is an ordinary sandbox run on its own thread); this module only moves text and outcomes between
threads and keeps the set of live runs, so shutdown can wait for them or end them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from host_functions.engine.model import Model
from host_functions.errors import RequestCancelled
from realm.request.spec import RunRequest
from realm.sandbox.report import RunResult

COALESCE_S = 0.01  # how long text a guest emits may wait to join the next before it is streamed


@dataclass(eq=False)
class GuestRun:
    """One guest run in flight: the text it emitted so far (a queue), its outcome and its cancel flag."""

    tenant: str
    pieces: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: asyncio.Future[RunResult] | None = None

    async def stream(self) -> AsyncIterator[str]:
        """Every piece of text in order, as it arrives, until the run ends (its outcome is then set)."""
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


class Runner:
    """Runs tenants' guests on `workers` threads against one shared model."""

    def __init__(self, model: Model, workers: int) -> None:
        self.model = model
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="realm-request")
        self._live: set[GuestRun] = set()

    @property
    def live(self) -> int:
        """Runs started and not finished (running or waiting for a thread)."""
        return len(self._live)

    def start(self, request: RunRequest) -> GuestRun:
        """Queue one run; call from the event loop. Its text arrives on `.stream()`. Raises GuestError
        for limits that do not validate, before anything is queued."""
        request.limits.validate()
        loop = asyncio.get_running_loop()
        run = GuestRun(request.tenant)

        waiting: list[str] = []  # text the guest emitted since the loop last took it
        lock = threading.Lock()

        def on_text(text: str) -> None:
            # The loop takes the text at most once per COALESCE_S, however often the guest emits: one
            # piece (one SSE event) per batch, not one per emit call (a guest may emit byte by byte).
            with lock:
                waiting.append(text)
                if len(waiting) > 1:
                    return  # a take() is already scheduled and will collect this too
            loop.call_soon_threadsafe(loop.call_later, COALESCE_S, take)

        def take() -> None:
            with lock:
                text = "".join(waiting)
                waiting.clear()
            if text:
                run.pieces.put_nowait(text)

        def work() -> RunResult:
            try:
                if run.cancel.is_set():  # the client left while the run waited for a thread
                    raise RequestCancelled("the client cancelled the request")
                return request.run(self.model, on_text=on_text, cancel=run.cancel)
            finally:
                loop.call_soon_threadsafe(take)  # the last text, queued before the outcome is set

        def finished(outcome: asyncio.Future[RunResult]) -> None:
            self._live.discard(run)
            if not outcome.cancelled():
                outcome.exception()  # a run whose client left is never awaited: its error is expected

        run.outcome = asyncio.wrap_future(self._pool.submit(work))
        self._live.add(run)
        run.outcome.add_done_callback(finished)
        return run

    def cancel_all(self) -> None:
        """End every live run at its next host call (shutdown after the drain timeout)."""
        for run in list(self._live):
            run.cancel.set()

    def close(self) -> None:
        """Cancel what is left and wait for the worker threads."""
        self.cancel_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
