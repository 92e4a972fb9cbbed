"""A reference-counted cache with a byte budget: what the adapter pool and the merged copies share.

An entry is held from `acquire` until as many `release`s; held entries are never dropped. When a
new entry needs room, the entries no one holds are dropped least recently used first, but only if
that makes enough room: an entry that cannot fit beside the held ones (or not at all) is the
caller's error, and the idle entries stay.

A new entry is built outside the cache's lock, its bytes reserved meanwhile, so a lookup of another
entry never waits for a build; a second caller of the same key waits for that one build instead of
building it twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(eq=False)
class _Entry(Generic[V]):
    nbytes: int
    users: int = 1
    value: V | None = None
    built: threading.Event = field(default_factory=threading.Event)  # set when value is in, or the build failed


class RefCountedLRU(Generic[K, V]):
    """Values by key, each held by its users, within `budget_bytes`."""

    def __init__(self, budget_bytes: int, on_drop: Callable[[K], None] | None = None) -> None:
        """on_drop(key) runs (outside the lock) for every entry dropped to make room."""
        self.budget_bytes = budget_bytes
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()  # least recently used first
        self._used = 0  # bytes of every entry, those being built included

    @property
    def used_bytes(self) -> int:
        return self._used

    def hold(self, key: K) -> V | None:
        """The value of `key`, held until `release`, if it is cached (or being built); else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._use(key, entry)
        return self._built(entry)

    def acquire(self, key: K, nbytes: int, build: Callable[[], V], no_room: Callable[[int], Exception]) -> V:
        """The value of `key`, built by `build()` (taking `nbytes`) if it is not cached; held until `release`.

        Raises no_room(bytes held by entries in use) when the new entry cannot fit the budget even
        after dropping every idle entry, and whatever `build` raises (the entry is not kept then).
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                dropped = self._make_room(nbytes, no_room)
                entry = self._entries[key] = _Entry(nbytes)
                self._used += nbytes
            else:
                self._use(key, entry)
                dropped = None
        if dropped is None:  # cached, or being built by another caller
            value = self._built(entry)
            # If that build failed, this caller builds (or fails) on its own.
            return self.acquire(key, nbytes, build, no_room) if value is None else value
        self._dropped(dropped)
        del dropped  # their memory is the room made: let it go before building
        try:
            entry.value = build()
        except BaseException:
            with self._lock:
                self._forget(key, entry)
            raise
        finally:
            entry.built.set()
        return entry.value

    def release(self, key: K) -> None:
        """A user is done with `key`; when none is left it stays cached until room is needed. Releasing
        what is not held does nothing."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.users > 0:
                entry.users -= 1

    def values(self) -> list[V]:
        """The built values, least recently used first."""
        with self._lock:
            entries = list(self._entries.values())
        return [e.value for e in entries if e.value is not None]

    def users(self) -> dict[K, int]:
        """How many users hold each held key."""
        with self._lock:
            return {key: e.users for key, e in self._entries.items() if e.users}

    def _use(self, key: K, entry: _Entry[V]) -> None:
        entry.users += 1
        self._entries.move_to_end(key)

    @staticmethod
    def _built(entry: _Entry[V]) -> V | None:
        """The value of an entry once it is built; None if its build failed (the entry is gone then)."""
        entry.built.wait()
        return entry.value

    def _make_room(self, nbytes: int, no_room: Callable[[int], Exception]) -> list[tuple[K, _Entry[V]]]:
        """Drop idle entries, least recently used first, until nbytes fit; those dropped, so that their
        values are let go (and on_drop runs) after the lock."""
        held = sum(e.nbytes for e in self._entries.values() if e.users)
        if held + nbytes > self.budget_bytes:
            raise no_room(held)
        dropped = []
        for key, entry in list(self._entries.items()):
            if self._used + nbytes <= self.budget_bytes:
                break
            if not entry.users:
                self._forget(key, entry)
                dropped.append((key, entry))
        return dropped

    def _forget(self, key: K, entry: _Entry[V]) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]
            self._used -= entry.nbytes

    def _dropped(self, dropped: list[tuple[K, _Entry[V]]]) -> None:
        if self._on_drop is not None:
            for key, _ in dropped:
                self._on_drop(key)
