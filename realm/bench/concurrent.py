"""Requests at once for the benches: n threads started together, timed until the last ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_at_once(n: int, work: Callable[[int], int]) -> tuple[int, float]:
    """work(0) .. work(n - 1), each on its own thread, all started together: the sum of what they
    returned (completion tokens) and the seconds until the last ended. Re-raises the first exception a
    thread raised: a failed request is the bench's error, never a lower figure."""
    returned: list[int] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            returned.append(work(i))  # list.append is atomic: no lock
        except BaseException as exc:  # noqa: BLE001  re-raised below, on the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(returned), time.perf_counter() - started
