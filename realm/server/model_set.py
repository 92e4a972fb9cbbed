"""The models one server serves: each loaded on first use, the least recently used idle ones unloaded
when a load needs room under the memory budget (docs/serve.md, "Many models").

Every request holds a lease on its model from admission to the end of its response (streaming
included); a model with a lease is never unloaded. A load runs on a thread, one per model at a time
(concurrent first requests for a model wait for the same load), and holds no lock that another
model's requests need. The state lives on the server's event loop: acquire and release are called
there, and only loading and unloading run elsewhere.

What a model costs is measured once it is loaded (the `measure` given, e.g. footprint.retained_bytes:
its weights as loaded plus its KV pool); before its first load it is estimated as its file's size
plus its KV pool's budget.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from host_functions.arch.config import ModelConfig
from host_functions.engine.footprint import retained_bytes
from host_functions.engine.model import Model
from host_functions.errors import Overloaded, RealmError
from host_functions.formats.gguf_file import GGUFFile
from host_functions.kv.pool import describe_bytes
from realm.chat import ChatTemplate, load_chat_template
from realm.models import load_model, scheduled, unload_model
from realm.server.model_catalog import ModelCatalog, ModelSource, file_size, kv_fitted

log = logging.getLogger("realm.server")


class ModelNotServed(RealmError):
    """The request names a model this server does not serve."""


class ModelLoadFailed(RealmError):
    """The model's file could not be loaded (logged once; every request for it gets this)."""


class ModelTooLarge(RealmError):
    """The model alone needs more than the whole memory budget."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded model with what serving it needs: its chat template and its measured cost in bytes."""

    id: str
    model: Model
    template: ChatTemplate
    cost: int


Loader = Callable[[ModelSource], ServedModel]  # runs on a thread; raises RealmError for a bad file
Unloader = Callable[[ServedModel], None]  # runs on a thread, for a model nothing uses


@dataclass(eq=False)
class _Entry:
    source: ModelSource
    charge: int  # what it holds (measured once loaded) or is expected to (before its first load)
    served: ServedModel | None = None
    busy: asyncio.Future[None] | None = None  # its load, or the load its unloading makes room for
    error: RealmError | None = None
    leases: int = 0
    used: int = 0  # the tick of its last use: the least recently used idle model goes first
    config: ModelConfig | None = None  # read from its file's header when an adapter is checked


class Lease:
    """A request's hold on a loaded model; release() once its response ended (idempotent)."""

    def __init__(self, models: ModelSet, entry: _Entry, served: ServedModel) -> None:
        self._models, self._entry, self.served = models, entry, served
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._models._release(self._entry)


class ModelSet:
    """The served models by id, loaded on demand within `memory` bytes (None: no bound)."""

    def __init__(self, sources: Sequence[ModelSource], load: Loader, unload: Unloader,
                 memory: int | None = None, kv_bytes: Callable[[ModelSource], int] = lambda source: 0) -> None:
        if not sources:
            raise RealmError("a server needs at least one model")
        self.memory = memory
        self.sources = list(sources)
        self._load, self._unload = load, unload
        self._entries = {s.id: _Entry(s, file_size(s) + kv_bytes(s)) for s in sources}
        self.default = sources[0].id
        self._ticks = itertools.count(1)
        self._freeing = 0  # bytes of models being unloaded: still held until their unload ends
        self._changed: asyncio.Event | None = None

    @property
    def ids(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries

    def check_sizes(self) -> None:
        """ModelTooLarge for the first model whose estimate (its file plus its KV pool) alone is over the
        whole budget (checked at start: such a model could never be served)."""
        for entry in self._entries.values():
            self._check_fits(entry, entry.charge)

    def preload(self, model_id: str) -> ServedModel:
        """Load `model_id` now, before serving (the start's default model); raises what loading raises."""
        entry = self._entries[model_id]
        if entry.served is None:
            self._check_fits(entry, entry.charge)
            served = self._load(entry.source)
            try:
                self._check_fits(entry, served.cost)
            except ModelTooLarge:
                self._unload(served)
                raise
            entry.served, entry.charge = served, served.cost
        return entry.served

    async def acquire(self, model_id: str, wait_s: float) -> Lease:
        """A lease on `model_id`, loading it first if need be (unloading idle models for room).

        Raises ModelNotServed, ModelLoadFailed (its file would not load), ModelTooLarge (over the whole
        budget), Overloaded when no room was made (the others busy) or the load did not end within wait_s.
        """
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotServed(f"the model {model_id[:128]!r} is not served here")
        deadline = time.monotonic() + wait_s
        while True:
            if entry.served is not None:
                return self._lease(entry)
            if entry.error is not None:
                raise entry.error
            if entry.busy is None:
                self._check_fits(entry, entry.charge)
                victims = self._room_for(entry)
                if victims is not None:
                    self._start(victims, entry)
            waiting = asyncio.shield(entry.busy) if entry.busy is not None else self._change().wait()
            try:
                await asyncio.wait_for(waiting, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Overloaded(_why_waited(entry, self.memory)) from None

    def status(self) -> list[dict[str, Any]]:
        """Each model: id, loaded, bytes (measured, or the estimate before its first load), in_use, loading, error."""
        return [{"id": e.source.id, "loaded": e.served is not None, "bytes": e.charge, "in_use": e.leases,
                 "loading": e.busy is not None and e.served is None, "error": None if e.error is None else str(e.error)}
                for e in self._entries.values()]

    def configs(self) -> list[ModelConfig]:
        """Each served model's configuration: a loaded one's, else read from its file's header once (a
        file whose header does not read is left out: its load says why)."""
        configs = []
        for entry in self._entries.values():
            if entry.config is None:
                try:
                    entry.config = ModelConfig.from_gguf(GGUFFile(entry.source.path))
                except RealmError:
                    continue
            configs.append(entry.config)
        return configs

    def loaded(self) -> list[ServedModel]:
        return [e.served for e in self._entries.values() if e.served is not None]

    def close(self) -> None:
        """Unload every model (the server stopped: nothing runs)."""
        for entry in self._entries.values():
            if entry.served is not None:
                served, entry.served = entry.served, None
                self._unload(served)

    # -- internals -----------------------------------------------------------------------------

    def _lease(self, entry: _Entry) -> Lease:
        assert entry.served is not None
        entry.leases += 1
        entry.used = next(self._ticks)
        return Lease(self, entry, entry.served)

    def _release(self, entry: _Entry) -> None:
        entry.leases -= 1
        entry.used = next(self._ticks)
        if entry.leases == 0:
            self._notify()  # a load waiting for room may find it now

    def _check_fits(self, entry: _Entry, cost: int) -> None:
        if self.memory is not None and cost > self.memory:
            raise ModelTooLarge(f"the model {entry.source.id!r} needs {describe_bytes(cost)}, more than the whole "
                                f"--model-memory of {describe_bytes(self.memory)}")

    def _room_for(self, entry: _Entry) -> list[_Entry] | None:
        """The idle models to unload, least recently used first, so that `entry` fits; None if it cannot
        fit now (the others are in use or loading)."""
        if self.memory is None:
            return []
        held = self._freeing + sum(e.charge for e in self._entries.values()
                                   if e is not entry and (e.served is not None or e.busy is not None))
        free = self.memory - held
        victims: list[_Entry] = []
        for other in sorted(self._idle(entry), key=lambda e: e.used):
            if free >= entry.charge:
                break
            victims.append(other)
            free += other.charge
        return victims if free >= entry.charge else None

    def _idle(self, besides: _Entry | None = None) -> list[_Entry]:
        return [e for e in self._entries.values()
                if e is not besides and e.served is not None and e.leases == 0 and e.busy is None]

    def _trim(self) -> None:
        """Unload idle models, least recently used first, while the models hold more than the budget (one
        measured larger than its estimate)."""
        if self.memory is None:
            return
        over = self._freeing + sum(e.charge for e in self._entries.values()
                                   if e.served is not None or e.busy is not None) - self.memory
        victims = []
        for other in sorted(self._idle(), key=lambda e: e.used):
            if over <= 0:
                break
            victims.append(other)
            over -= other.charge
        if victims:
            self._start(victims)

    def _start(self, victims: list[_Entry], entry: _Entry | None = None) -> None:
        """Unload `victims` and then load `entry` (if any), on a thread."""
        gone = []
        for victim in victims:  # no lease is granted on them from here on
            assert victim.served is not None
            gone.append(victim.served)
            victim.served = None
            self._freeing += victim.charge
        task = asyncio.ensure_future(self._swap_off_loop(gone, victims, entry))
        for waiter in (*victims, *([entry] if entry is not None else [])):
            waiter.busy = task  # a request for a victim waits until it is gone, then loads it again

    async def _swap_off_loop(self, gone: list[ServedModel], victims: list[_Entry], entry: _Entry | None) -> None:
        try:
            served = await asyncio.to_thread(self._swap, gone, None if entry is None else entry.source)
            if entry is not None:
                entry.served = served
        except Exception as exc:  # noqa: BLE001  a bad file fails its model's requests, never the server
            assert entry is not None  # unloading alone raises nothing
            entry.error = exc if isinstance(exc, ModelTooLarge) else ModelLoadFailed(
                f"the model {entry.source.id!r} could not be loaded")
            log.error("model %s (%s) could not be loaded: %s: %s", entry.source.id, entry.source.path,
                      type(exc).__name__, exc)
        finally:
            for victim in victims:
                victim.busy = None
                self._freeing -= victim.charge
            if entry is not None:
                entry.busy = None
            self._notify()
        if entry is not None and entry.served is not None:
            entry.charge = entry.served.cost
            log.info("loaded model %s: %s", entry.source.id, describe_bytes(entry.charge))
            self._trim()

    def _swap(self, gone: list[ServedModel], source: ModelSource | None) -> ServedModel | None:
        """On a thread: unload `gone`, then load `source` (unloading it again if it alone is over the budget)."""
        for served in gone:
            self._unload(served)
            log.info("unloaded model %s", served.id)
        if source is None:
            return None
        served = self._load(source)
        if self.memory is not None and served.cost > self.memory:
            self._unload(served)
            raise ModelTooLarge(f"the model {source.id!r} holds {describe_bytes(served.cost)} once loaded, more "
                                f"than the whole --model-memory of {describe_bytes(self.memory)}")
        return served

    def _change(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


def _why_waited(entry: _Entry, memory: int | None) -> str:
    if entry.busy is not None:
        return f"the model {entry.source.id!r} is still loading; retry shortly"
    return (f"the model {entry.source.id!r} needs {describe_bytes(entry.charge)} and the other models in use hold "
            f"the rest of --model-memory ({describe_bytes(memory or 0)}); retry shortly")


def loaders(catalog: ModelCatalog) -> tuple[Loader, Unloader]:
    """How `catalog`'s models load and unload: through the process-wide cache (realm.models) with their
    KV pool, prefix cache setting and chat template, their cost measured (footprint.retained_bytes)."""

    def load(source: ModelSource) -> ServedModel:
        model = load_model(source.path, catalog.backend, kv_memory=catalog.kv_to_load(source))
        try:
            scheduled(model)[1].set_prefix_cache(catalog.prefix_cache)
            template = load_chat_template(model.tokenizer, model.config.arch, catalog.chat_template)
            return ServedModel(source.id, model, template, _fit_kv(model, catalog))
        except BaseException:
            unload_model(source.path, catalog.backend)
            raise

    def unload(served: ServedModel) -> None:
        unload_model(served.model.path, catalog.backend)

    return load, unload


def _fit_kv(model: Model, catalog: ModelCatalog) -> int:
    """The model's measured cost, its KV pool first refitted to what its weights as loaded (measured:
    a little more than the file) leave of --model-memory when Realm sizes the pool (ModelCatalog.fits_kv)."""
    cost = retained_bytes(model)
    if catalog.fits_kv and catalog.memory is not None and cost > catalog.memory:
        pool = model.backend.kv_pool
        weights = cost - (0 if pool is None else pool.n_blocks * pool.block_bytes)
        model.set_kv_memory(kv_fitted(catalog.memory, catalog.memory // 4, weights))
        cost = retained_bytes(model)
    return cost


def serving(catalog: ModelCatalog) -> ModelSet:
    """The ModelSet of `catalog`'s models (see loaders). RealmError as ModelCatalog.sources raises."""
    return ModelSet(catalog.sources(), *loaders(catalog), catalog.memory, catalog.kv_estimate)
