"""The adapters of one model: loaded on first use, shared by every tenant, bounded by a memory budget.

An adapter is identified by its content digest, so two tenants binding the same file share one
copy, and a file replaced on disk is a new adapter (requests that hold the old one keep it). An
adapter is in use while a request holds it (`acquire`/`release`); when loading one would pass the
budget, the least recently used idle adapters are dropped first (lora.lru). One that cannot fit
even then must wait for adapters in use to be released (Overloaded); one larger than the whole budget
is an AdapterError naming the budget.

Each tenant's adapters count against its fair share of the budget (fair_share, docs/isolation.md):
an adapter a tenant holds is charged to it once however many of its requests hold it (an adapter two
tenants hold is charged to both). One that would put a tenant over its share while another active
tenant's share needs the room is Overloaded (the request may wait and retry: `fair_share.waiting`);
one past what the tenant may ever hold is an AdapterError naming the limit.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from host_functions.arch.config import ModelConfig
from host_functions.errors import AdapterError, Overloaded
from host_functions.fair_share import NO_TENANT, Charges, Claim, NeverFits, Refused
from host_functions.lora.adapter import LoraAdapter, load_adapter
from host_functions.lora.lru import RefCountedLRU

DEFAULT_BUDGET_BYTES = 1 << 30

SourceKey = tuple[str, int, int]  # (resolved path, size, mtime) of an adapter's file


class AdapterPool:
    """Loaded adapters of one model, least recently used first."""

    def __init__(self, config: ModelConfig, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if budget_bytes <= 0:
            raise AdapterError(f"the adapter memory budget must be positive, got {budget_bytes}")
        self.config = config
        self._adapters: RefCountedLRU[str, LoraAdapter] = RefCountedLRU(budget_bytes, self._forget_sources)
        self._sources_lock = threading.Lock()
        self._by_source: dict[SourceKey, str] = {}  # -> digest, for the adapters loaded
        self.charges = Charges(budget_bytes, "bytes of LoRA adapters")

    @property
    def budget_bytes(self) -> int:
        return self._adapters.budget_bytes

    @property
    def used_bytes(self) -> int:
        return self._adapters.used_bytes

    def acquire(self, path: str | Path, claim: Claim = NO_TENANT) -> LoraAdapter:
        """The adapter at `path` for claim.tenant, loading it if needed; hold it until `release`.
        Raises AdapterError for a file that is not an adapter or one the tenant may never hold (the
        budget, its adapter_bytes), Overloaded while adapters in use or the tenant's share leave no
        room for it now."""
        adapter = self._hold(path)
        try:
            self._charge(claim, adapter)
        except (AdapterError, Overloaded):
            self._adapters.release(adapter.digest)
            raise
        return adapter

    def _charge(self, claim: Claim, adapter: LoraAdapter) -> None:
        try:
            self.charges.charge(claim, adapter.digest, adapter.nbytes)
        except NeverFits as exc:
            raise AdapterError(f"{adapter.nbytes} bytes: {exc} (the adapter memory budget, the tenant's "
                               "adapter_bytes limit; docs/isolation.md)", adapter.name) from None
        except Refused as exc:
            raise Overloaded(f"{adapter.nbytes} bytes: {exc}") from None

    def _hold(self, path: str | Path) -> LoraAdapter:
        source = _source_key(Path(path))
        with self._sources_lock:
            digest = self._by_source.get(source)
        held = None if digest is None else self._adapters.hold(digest)
        if held is not None:
            return held
        # outside every lock: loading takes a while; one larger than the whole budget is refused undecoded
        adapter = load_adapter(path, self.config, max_bytes=self.budget_bytes)

        def no_room(held_bytes: int) -> Overloaded:  # held adapters are released as their requests end
            return Overloaded(f"its {adapter.nbytes} bytes do not fit the adapter memory budget of "
                              f"{self.budget_bytes} bytes now ({held_bytes} held by adapters in use)")

        # The same content may have been loaded meanwhile, or from another path: then that copy is shared.
        held = self._adapters.acquire(adapter.digest, adapter.nbytes, lambda: adapter, no_room)
        with self._sources_lock:
            self._by_source[source] = held.digest
        return held

    def release(self, adapter: LoraAdapter, tenant: str = "") -> None:
        """A request of `tenant` is done with `adapter`; it stays loaded until room is needed."""
        self.charges.discharge(tenant, adapter.digest, adapter.nbytes)
        self._adapters.release(adapter.digest)

    def loaded(self) -> list[LoraAdapter]:
        return self._adapters.values()

    def in_use(self) -> dict[str, int]:
        """How many holders each adapter in use has, by digest."""
        return self._adapters.users()

    def _forget_sources(self, digest: str) -> None:
        with self._sources_lock:
            self._by_source = {k: v for k, v in self._by_source.items() if v != digest}


def _source_key(path: Path) -> SourceKey:
    """Where an adapter comes from and its version on disk (a folder: its safetensors file's). Links are
    not followed: one put in place of a bound file is refused when loaded, and must never find the
    adapter another binding loaded from where it leads."""
    path = path.expanduser().absolute()
    try:
        probe = path / "adapter_model.safetensors" if stat.S_ISDIR(os.lstat(path).st_mode) else path
        st = os.lstat(probe)
    except OSError:
        return str(path), -1, -1  # load_adapter reports the missing file
    return str(path), st.st_size, st.st_mtime_ns
