"""The process's one wasmtime Engine: the settings every guest runs under, the epoch ticker that is
wasmtime's wall clock, and the Store each request gets with its limits.

The compile worker (realm.sandbox.compiler) builds its Engine from the same `engine_config()`: a
serialized module only loads into an engine with the settings it was compiled for. So this module
imports nothing beyond wasmtime, and the worker starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING

import wasmtime

if TYPE_CHECKING:
    from host_functions.abi import Limits

EPOCH_TICK_S = 0.01  # the engine's epoch advances this often; wall-clock deadlines are in ticks
MAX_TABLE_ELEMENTS = 100_000  # function table entries of one instance (a C guest has tens)

# What guests may use: the core features a C or Zig guest compiles to (bulk memory, sign extension,
# multi-value, saturating conversions, reference types, SIMD). Everything else is off, so no guest
# can hold host memory beside its one linear memory (GC heaps, extra memories, shared memories,
# exception objects, stacks of continuations), and relaxed SIMD's host-dependent results cannot make
# a guest's output differ between machines.
_FEATURES_OFF = ("wasm_gc", "wasm_exceptions", "wasm_multi_memory", "wasm_threads", "wasm_memory64",
                 "wasm_component_model", "wasm_function_references", "wasm_stack_switching",
                 "wasm_custom_page_sizes", "wasm_wide_arithmetic", "wasm_tail_call", "wasm_relaxed_simd",
                 "gc_support", "shared_memory")
_SETTINGS = {"consume_fuel": True, "epoch_interruption": True, "cranelift_opt_level": "speed",
             **{name: False for name in _FEATURES_OFF}}
SETTINGS_DIGEST = hashlib.sha256(repr(sorted(_SETTINGS.items())).encode()).hexdigest()[:12]

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()


def engine_config() -> wasmtime.Config:
    """The wasmtime Config of every Engine that compiles or runs guests."""
    config = wasmtime.Config()
    for name, value in _SETTINGS.items():
        setattr(config, name, value)
    return config


def engine() -> wasmtime.Engine:
    """The process-wide Engine; the first call starts its epoch ticker."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = wasmtime.Engine(engine_config())
            threading.Thread(target=_tick, args=(_engine,), name="realm-epoch", daemon=True).start()
        return _engine


def new_store(limits: Limits) -> wasmtime.Store:
    """A Store for one request: its memory cap, its fuel and its wall-clock deadline in epoch ticks."""
    store = wasmtime.Store(engine())
    store.set_limits(memory_size=limits.memory_bytes, table_elements=MAX_TABLE_ELEMENTS,
                     instances=1, tables=4, memories=1)
    store.set_fuel(limits.fuel)
    store.set_epoch_deadline(int(limits.wall_seconds / EPOCH_TICK_S) + 1)
    return store


def _tick(eng: wasmtime.Engine) -> None:
    while True:
        time.sleep(EPOCH_TICK_S)
        eng.increment_epoch()
