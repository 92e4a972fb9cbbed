"""The reference-counted LRU behind the adapter pool and the merged LoRA cache: held entries stay, idle
ones go least recently used first when room is needed, what cannot fit is the caller's error, and a
build never holds up a lookup of another entry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from host_functions.lora.lru import RefCountedLRU


class NoRoom(Exception):
    pass


def _acquire(lru: RefCountedLRU[str, str], key: str, nbytes: int = 10) -> str:
    return lru.acquire(key, nbytes, lambda: key.upper(), lambda held: NoRoom(f"{held} held"))


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_idle_entries_go_least_recently_used_first_and_held_ones_stay():
    dropped: list[str] = []
    lru: RefCountedLRU[str, str] = RefCountedLRU(30, dropped.append)
    for key in ("a", "b", "c"):
        _acquire(lru, key)
    lru.release("a")
    lru.release("c")
    assert lru.hold("a") == "A"  # used again: now c is the least recently used idle entry
    lru.release("a")
    assert _acquire(lru, "d") == "D"
    assert dropped == ["c"] and lru.values() == ["B", "A", "D"] and lru.used_bytes == 30
    assert lru.users() == {"b": 1, "d": 1}
    assert lru.hold("c") is None


def test_what_cannot_fit_beside_the_held_entries_is_the_callers_error_and_drops_nothing():
    lru: RefCountedLRU[str, str] = RefCountedLRU(30)
    _acquire(lru, "a")
    _acquire(lru, "b")
    lru.release("b")
    with pytest.raises(NoRoom, match="10 held"):
        _acquire(lru, "big", 25)  # would fit only without the held a
    assert lru.values() == ["A", "B"]  # the idle b was not dropped for nothing
    with pytest.raises(NoRoom):
        _acquire(lru, "huge", 31)
    lru.release("a")
    lru.release("a")  # releasing what is not held does nothing
    assert lru.users() == {} and _acquire(lru, "big", 25) == "BIG" and lru.values() == ["BIG"]


def test_a_build_holds_up_neither_cached_lookups_nor_other_builds_and_runs_once_per_key():
    lru: RefCountedLRU[str, str] = RefCountedLRU(100)
    _acquire(lru, "cached")
    started, finish = threading.Event(), threading.Event()
    builds: list[str] = []

    def slow() -> str:
        builds.append("slow")
        started.set()
        assert finish.wait(10)
        return "SLOW"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lru.acquire, "slow", 10, slow, NoRoom)
        assert started.wait(10)
        second = pool.submit(lru.acquire, "slow", 10, slow, NoRoom)
        _until(lambda: lru.users()["slow"] == 2)  # the second caller waits for the first build
        assert lru.hold("cached") == "CACHED"  # while "slow" is being built
        assert _acquire(lru, "other") == "OTHER"
        assert lru.used_bytes == 30  # the build's bytes are reserved
        finish.set()
        assert first.result(10) == second.result(10) == "SLOW"
    assert builds == ["slow"]


def test_a_failed_build_is_not_kept_and_a_waiting_caller_builds_on_its_own():
    lru: RefCountedLRU[str, str] = RefCountedLRU(100)
    started, finish = threading.Event(), threading.Event()

    def failing() -> str:
        started.set()
        assert finish.wait(10)
        raise MemoryError("no memory")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lru.acquire, "x", 10, failing, NoRoom)
        assert started.wait(10)
        second = pool.submit(lru.acquire, "x", 10, lambda: "X", NoRoom)
        _until(lambda: lru.users()["x"] == 2)
        finish.set()
        with pytest.raises(MemoryError):
            first.result(10)
        assert second.result(10) == "X"
    assert lru.users() == {"x": 1} and lru.used_bytes == 10
