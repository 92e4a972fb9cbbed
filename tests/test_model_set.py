"""The model set of `realm serve` (realm/server/model_set.py) on real tiny models: loading on first use,
one load for concurrent first requests, least recently used idle models unloaded for room, leased models
never, refusals when nothing fits, a bad file failing only its model, and a slow load leaving other
models' requests alone."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from oracle import ARCHS

from host_functions.errors import Overloaded
from realm.models import default_model_path
from realm.server.model_catalog import MIN_KV_BYTES, ModelCatalog, ModelSource
from realm.server.model_set import Loader, ModelLoadFailed, ModelSet, ModelTooLarge, ServedModel, loaders, serving

FILES = {"qwen2": ARCHS / "tiny-qwen2-Q4_K.gguf", "qwen3": ARCHS / "tiny-qwen3-Q4_K.gguf",
         "llama3": ARCHS / "tiny-llama3-Q4_K.gguf"}
KV = 4 << 20


def catalog(memory: int | None = None, **extra: Path) -> ModelCatalog:
    files = {**FILES, **extra}
    return ModelCatalog(tuple(f"{name}={path}" for name, path in files.items()), memory=memory, kv_memory=KV,
                        backend="cpu")


@pytest.fixture(scope="module")
def cost() -> int:
    """The largest measured cost of the three models (each loaded once, then unloaded)."""
    models = serving(catalog())
    costs = [models.preload(name).cost for name in FILES]
    models.close()
    assert all(c > KV for c in costs)  # the KV pool's budget is counted, and the weights on top of it
    return max(costs)


def loaded(models: ModelSet) -> set[str]:
    return {s["id"] for s in models.status() if s["loaded"]}


async def use(models: ModelSet, name: str) -> ServedModel:
    lease = await models.acquire(name, 30)
    lease.release()
    return lease.served


def test_the_least_recently_used_idle_model_is_unloaded_for_room(cost):
    async def go(models: ModelSet) -> None:
        await use(models, "qwen2")
        await use(models, "qwen3")
        await use(models, "qwen2")  # qwen3 is now the least recently used
        await use(models, "llama3")
        assert loaded(models) == {"qwen2", "llama3"}
        await use(models, "qwen3")
        assert loaded(models) == {"llama3", "qwen3"}

    models = serving(catalog(memory=2 * cost + cost // 2))
    asyncio.run(go(models))
    models.close()


def test_a_leased_model_is_never_unloaded_and_a_load_waits_for_room(cost):
    async def go(models: ModelSet) -> None:
        held = await models.acquire("qwen2", 30)
        await use(models, "qwen3")
        await use(models, "llama3")  # qwen2 is older but held: qwen3 goes
        assert loaded(models) == {"qwen2", "llama3"}
        other = await models.acquire("llama3", 30)
        with pytest.raises(Overloaded, match="in use"):
            await models.acquire("qwen3", 0.2)  # both held: no room within its wait
        waiting = asyncio.ensure_future(models.acquire("qwen3", 30))
        await asyncio.sleep(0.1)
        assert not waiting.done() and loaded(models) == {"qwen2", "llama3"}
        other.release()  # room: llama3 is idle now
        (await waiting).release()
        assert loaded(models) == {"qwen2", "qwen3"}
        held.release()

    models = serving(catalog(memory=2 * cost + cost // 2))
    asyncio.run(go(models))
    models.close()


def test_a_model_over_the_whole_budget_is_refused(cost):
    small = serving(catalog(memory=KV))  # not even one model's KV pool and file
    with pytest.raises(ModelTooLarge, match="more than the whole --model-memory"):
        small.check_sizes()
    with pytest.raises(ModelTooLarge):
        asyncio.run(small.acquire("qwen2", 1))


def with_loader(wrap: Callable[[Loader], Loader]) -> ModelSet:
    """The three models without a budget, loaded by `wrap` around the server's own loader."""
    load, unload = loaders(catalog())
    return ModelSet(catalog().sources(), wrap(load), unload)


def test_concurrent_first_requests_share_one_load():
    loads = []

    def counted(real: Loader) -> Loader:
        def load(source: ModelSource) -> ServedModel:
            loads.append(source.id)
            return real(source)
        return load

    models = with_loader(counted)

    async def go() -> list[ServedModel]:
        return await asyncio.gather(*(use(models, "qwen3") for _ in range(6)))

    served = asyncio.run(go())
    assert loads == ["qwen3"] and len({id(s.model) for s in served}) == 1
    models.close()


def test_a_slow_load_never_holds_up_another_models_requests():
    gate = threading.Event()

    def slow(real: Loader) -> Loader:
        def load(source: ModelSource) -> ServedModel:
            if source.id == "llama3":
                assert gate.wait(30)
            return real(source)
        return load

    models = with_loader(slow)
    models.preload("qwen2")

    async def go() -> None:
        loading = asyncio.ensure_future(use(models, "llama3"))
        await asyncio.sleep(0.1)
        for _ in range(3):
            await asyncio.wait_for(use(models, "qwen2"), 5)  # answered while llama3 is still loading
        assert not loading.done() and models.status()[2]["loading"]
        gate.set()
        await loading

    asyncio.run(go())
    assert loaded(models) == {"qwen2", "llama3"}
    models.close()


def test_a_file_that_does_not_load_fails_its_model_alone_logged_once(tmp_path, caplog):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))
    models = serving(catalog(broken=broken))

    async def go() -> None:
        for _ in range(2):
            with pytest.raises(ModelLoadFailed, match="'broken' could not be loaded"):
                await models.acquire("broken", 30)
        await use(models, "qwen2")

    with caplog.at_level(logging.ERROR, logger="realm.server"):
        asyncio.run(go())
    assert len([r for r in caplog.records if "broken" in r.getMessage()]) == 1
    assert loaded(models) == {"qwen2"}
    models.close()


def test_unloading_frees_the_model(cost):
    async def go(models: ModelSet) -> weakref.ref:
        first = weakref.ref((await use(models, "qwen2")).model)
        await use(models, "qwen3")
        await use(models, "llama3")  # room for it: qwen2, the least recently used, goes
        return first

    models = serving(catalog(memory=2 * cost + cost // 2))
    first = asyncio.run(go(models))
    gc.collect()
    assert "qwen2" not in loaded(models) and first() is None
    models.close()


def test_the_measured_cost_is_the_weights_as_loaded_plus_the_whole_kv_pool():
    def cost(kv: int) -> int:
        load, unload = loaders(ModelCatalog((str(FILES["qwen2"]),), kv_memory=kv, backend="cpu"))
        served = load(ModelSource("qwen2", FILES["qwen2"]))
        unload(served)
        return served.cost

    small, large = cost(KV), cost(2 * KV)
    assert large - small == pytest.approx(KV, abs=64 << 10)  # the pool's whole blocks (at most 64 KiB each here)
    assert small - KV > FILES["qwen2"].stat().st_size // 2  # the weights, copied from the file, on top


def test_a_tight_budget_shrinks_a_models_kv_pool_to_what_its_weights_leave():
    gemma = default_model_path()
    size = gemma.stat().st_size
    # Less than its weights plus a quarter of the budget for KV; then no more than its file.
    for memory, most in ((size + (20 << 20), 20 << 20), (size, 8 << 20)):
        models = serving(ModelCatalog((f"gemma={gemma}",), memory=memory, backend="cpu"))
        models.check_sizes()  # estimated with the KV pool its file leaves
        served = models.preload("gemma")
        try:
            pool = served.model.backend.kv_pool
            assert pool is not None and MIN_KV_BYTES - pool.block_bytes < pool.n_blocks * pool.block_bytes <= most
            assert served.cost <= memory
        finally:
            models.close()
    with pytest.raises(ModelTooLarge, match="more than the whole --model-memory"):
        serving(ModelCatalog((f"gemma={gemma}",), memory=size // 2, backend="cpu")).check_sizes()
