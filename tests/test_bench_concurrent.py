"""realm.bench.concurrent: n requests at once, their tokens summed, a failure re-raised."""

import threading

import pytest

from realm.bench.concurrent import run_at_once


def test_every_worker_runs_at_once_and_their_tokens_add_up() -> None:
    barrier = threading.Barrier(4, timeout=30)  # passes only if all four run at the same time

    def work(i: int) -> int:
        barrier.wait()
        return i + 1

    tokens, seconds = run_at_once(4, work)
    assert tokens == 10 and seconds > 0


def test_a_failed_request_is_the_benchs_error_not_a_lower_figure() -> None:
    def work(i: int) -> int:
        if i == 2:
            raise ValueError("request 2 failed")
        return 5

    with pytest.raises(ValueError, match="request 2 failed"):
        run_at_once(3, work)
