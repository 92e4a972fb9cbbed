"""The adapters of one model: loaded on first use, shared by every tenant, bounded by a memory budget.

An adapter is identified by its content digest, so two tenants binding the same file share one
copy, and a file replaced on disk is a new adapter (requests that hold the old one keep it). An
adapter is in use while a request holds it (`acquire`/`release`); when loading one would pass the
budget, the least recently used idle adapters are dropped first. One that cannot fit even then is
an AdapterError naming the budget.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from host_functions.arch.config import ModelConfig
from host_functions.errors import AdapterError
from host_functions.lora.adapter import LoraAdapter, load_adapter

DEFAULT_BUDGET_BYTES = 1 << 30


class AdapterPool:
    """Loaded adapters of one model, least recently used first."""

    def __init__(self, config: ModelConfig, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if budget_bytes <= 0:
            raise AdapterError(f"the adapter memory budget must be positive, got {budget_bytes}")
        self.config = config
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._by_source: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> digest
        self._adapters: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._users: dict[str, int] = {}

    @property
    def used_bytes(self) -> int:
        return sum(a.nbytes for a in self._adapters.values())

    def acquire(self, path: str | Path) -> LoraAdapter:
        """The adapter at `path`, loading it if needed; hold it until `release`. Raises AdapterError."""
        source = _source_key(Path(path))
        with self._lock:
            digest = self._by_source.get(source)
            if digest in self._adapters:
                return self._hold(self._adapters[digest])
        adapter = load_adapter(path, self.config)  # outside the lock: loading takes a while
        with self._lock:
            if adapter.digest in self._adapters:  # loaded meanwhile, or the same content elsewhere
                adapter = self._adapters[adapter.digest]
            else:
                self._make_room(adapter)
                self._adapters[adapter.digest] = adapter
            self._by_source[source] = adapter.digest
            return self._hold(adapter)

    def release(self, adapter: LoraAdapter) -> None:
        """A request is done with `adapter`; it stays loaded until room is needed."""
        with self._lock:
            left = self._users.get(adapter.digest, 0) - 1
            if left > 0:
                self._users[adapter.digest] = left
            else:
                self._users.pop(adapter.digest, None)

    def loaded(self) -> list[LoraAdapter]:
        with self._lock:
            return list(self._adapters.values())

    def _hold(self, adapter: LoraAdapter) -> LoraAdapter:
        self._adapters.move_to_end(adapter.digest)
        self._users[adapter.digest] = self._users.get(adapter.digest, 0) + 1
        return adapter

    def _make_room(self, adapter: LoraAdapter) -> None:
        for digest in list(self._adapters):
            if self.used_bytes + adapter.nbytes <= self.budget_bytes:
                break
            if digest not in self._users:
                del self._adapters[digest]
                self._by_source = {k: v for k, v in self._by_source.items() if v != digest}
        if self.used_bytes + adapter.nbytes > self.budget_bytes:
            raise AdapterError(f"LoRA adapter {adapter.name} ({adapter.nbytes} bytes) does not fit the adapter "
                               f"memory budget of {self.budget_bytes} bytes ({self.used_bytes} held by adapters in use)")


def _source_key(path: Path) -> tuple[str, int, int]:
    """Where an adapter comes from and its version on disk (a folder: its safetensors file's)."""
    resolved = path.expanduser().resolve()
    probe = resolved / "adapter_model.safetensors" if resolved.is_dir() else resolved
    try:
        st = os.stat(probe)
    except OSError:
        return str(resolved), -1, -1  # load_adapter reports the missing file
    return str(resolved), st.st_size, st.st_mtime_ns
