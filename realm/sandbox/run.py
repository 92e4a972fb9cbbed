"""The WebAssembly sandbox: one wasmtime Engine per process, guests compiled once per content hash,
and one Store per request that holds that request's limits and nothing else.

A guest gets exactly the imports of host_functions.abi (module `realm`): no WASI, so no files,
network, clock or environment. Modules are measured and compiled in a limited worker, and kept
compiled on disk (realm.sandbox.compiler). Limits are enforced by wasmtime where it can
(linear-memory cap, fuel for guest CPU, epoch interruption for wall-clock time) and by the host
functions for the rest (tokens, live sequences, output bytes, host memory, and the wall clock,
checked when each host call starts and returns and when realm_main returns). Whatever goes wrong
ends this request with a GuestError or QuotaExceeded; the engine, the model and every other
request carry on.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import wasmtime
import wasmtime._ffi as ffi
from wasmtime._extern import wrap_extern

from host_functions.abi import (
    ALLOC_EXPORT,
    ENTRY_EXPORT,
    HOST_FUNCTIONS,
    IMPORT_MODULE,
    MEMORY_EXPORT,
    AbiError,
    AdapterBinding,
    CallStats,
    GuestMemory,
    HostFunction,
    Limits,
    Session,
    Status,
    StepStats,
    TokenLogprob,
)
from host_functions.abi.status import status_of
from host_functions.engine.model import Model
from host_functions.errors import BackendError, GuestError, QuotaExceeded, RealmError, RequestCancelled
from realm.sandbox.compiler import engine_config, load_or_compile

MAX_MODULE_BYTES = 8 << 20  # a guest is a controller, not a model: 8 MiB is generous
MAX_TABLE_ELEMENTS = 100_000  # function table entries of one instance (a C guest has tens)
EPOCH_TICK_S = 0.01  # the engine's epoch advances this often; wall-clock deadlines are in ticks
_MODULE_CACHE_SIZE = 64
LOG_ERROR = 3  # the `log` level of an error line (realm.h: 0 debug .. 3 error)
MAX_REASON_CHARS = 300  # of a guest's own error line quoted in the request's error

_I32 = "i32"
_EXPORTS = {ALLOC_EXPORT: ((_I32,), (_I32,)), ENTRY_EXPORT: ((_I32, _I32), (_I32,))}

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()
_modules: OrderedDict[str, GuestModule] = OrderedDict()
_modules_lock = threading.Lock()


def engine() -> wasmtime.Engine:
    """The process-wide wasmtime Engine (guest_compiler.engine_config); starts its epoch ticker."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = wasmtime.Engine(engine_config())
            threading.Thread(target=_tick, args=(_engine,), name="realm-epoch", daemon=True).start()
        return _engine


def _tick(eng: wasmtime.Engine) -> None:
    while True:
        time.sleep(EPOCH_TICK_S)
        eng.increment_epoch()


def reference_guest_path(name: str = "generate") -> Path:
    """The built guest `name`.wasm shipped with Realm: guest/ in a source tree, realm/guests/ when installed."""
    here = Path(__file__).resolve().parents[1]  # realm/
    for folder in (here.parent / "guest", here / "guests"):
        if (folder / f"{name}.wasm").is_file():
            return folder / f"{name}.wasm"
    raise GuestError(f"the built-in guest {name!r} is missing (run scripts/build_guests.py)")


@dataclass(frozen=True)
class GuestModule:
    """A validated, compiled guest: its SHA-256 (of the binary form) and wasmtime Module."""

    sha256: str
    size: int
    module: wasmtime.Module = field(repr=False)


def to_wasm(data: bytes) -> bytes:
    """The binary form of a module given as WebAssembly binary or WAT text; GuestError otherwise."""
    if len(data) > MAX_MODULE_BYTES:
        raise GuestError(f"module is {len(data)} bytes, over the {MAX_MODULE_BYTES} byte limit")
    if data[:4] == b"\0asm":
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise GuestError("not a WebAssembly module (neither binary nor WAT text)") from None
    if not _WAT_START.match(text):
        raise GuestError("not a WebAssembly module (neither binary nor WAT text starting with '(')")
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise GuestError(f"WAT text does not parse: {_first_line(exc)}") from None


def compile_guest(data: bytes) -> GuestModule:
    """Check and compile a guest (binary or WAT), cached by content hash in memory and on disk.

    Raises GuestError if it is not WebAssembly, too large, exceeds a bound of realm.sandbox.module_bounds
    (functions, code size, locals, nesting, exports), fails to compile or needs more than the
    compile worker's budget, imports anything but the `realm` host functions with their exact
    signatures, or lacks a required export.
    """
    wasm = to_wasm(data)
    digest = hashlib.sha256(wasm).hexdigest()
    with _modules_lock:
        if digest in _modules:
            _modules.move_to_end(digest)
            return _modules[digest]
    module = load_or_compile(wasm, digest, engine(), IMPORT_MODULE)
    check_interface(module)
    guest = GuestModule(digest, len(wasm), module)
    with _modules_lock:
        _modules[digest] = guest
        while len(_modules) > _MODULE_CACHE_SIZE:
            _modules.popitem(last=False)
    return guest


def check_interface(module: wasmtime.Module) -> None:
    """GuestError unless every import is a host function with its ABI signature and the module exports
    `memory` (32-bit, unshared), `realm_alloc` and `realm_main`. (That imports come only from module
    `realm` is checked before compiling, by realm.sandbox.module_bounds.)"""
    for imp in module.imports:
        where = f"import {imp.module}.{imp.name}"
        fn = HOST_FUNCTIONS.get(imp.name or "")
        if fn is None:
            raise GuestError(f"{where}: no such host function")
        want = ((_I32,) * len(fn.params), (_I32,))
        got = _signature(imp.type)
        if got != want:
            raise GuestError(f"{where}: signature {_show(got)} does not match the ABI's {_show(want)}")
    exports = {e.name: e.type for e in module.exports}
    memory = exports.get(MEMORY_EXPORT)
    if not isinstance(memory, wasmtime.MemoryType) or memory.is_64 or memory.is_shared:
        raise GuestError(f"module must export a 32-bit unshared linear memory named {MEMORY_EXPORT!r}")
    for name, want in _EXPORTS.items():
        got = _signature(exports.get(name))
        if got != want:
            raise GuestError(f"module must export function {name}{_show(want)}, found {_show(got)}")


# WAT text may open with whitespace and comments (`;; line`, `(; block ;)`) before the module.
_WAT_START = re.compile(r"(?:\s|;;[^\n]*(?:\n|$)|\(;(?:[^;]|;(?!\)))*;\))*\(")


def _signature(ty: Any) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if not isinstance(ty, wasmtime.FuncType):
        return None
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


def _show(sig: tuple[tuple[str, ...], tuple[str, ...]] | None) -> str:
    if sig is None:
        return "(not a function)"
    return f"({', '.join(sig[0])}) -> ({', '.join(sig[1])})"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _last_line(exc: Exception) -> str:
    """wasmtime puts the cause last, after the backtrace ("wasm trap: call stack exhausted")."""
    lines = str(exc).strip().splitlines()
    return lines[-1].strip().removeprefix("wasm trap: ") if lines else type(exc).__name__


@dataclass
class RunResult:
    """What one request produced: the emitted text, the guest's status and how it got there."""

    text: str
    status: int
    trace: dict[str, CallStats]
    logs: list[tuple[int, str]]
    fuel_used: int
    seconds: float
    tokens_fed: int
    steps: StepStats = field(default_factory=StepStats)  # target steps, speculation's drafts and acceptances
    finish_reason: str | None = None  # as the guest reported it (result_report): "stop", "length", "context"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # reported by the guest (token_logprobs)


def speculation_figures(result: RunResult, decode_seconds: float | None = None) -> dict[str, float | int] | None:
    """What speculation did in a run: drafts made and accepted, acceptance_rate, and completion tokens per
    decode step of the target (plain decoding gives about 1); decode_tok_s when the decode time is
    known. None if nothing was verified."""
    steps = result.steps
    if not steps.verified_steps:
        return None
    produced = result.completion_tokens or 0
    figures: dict[str, float | int] = {
        "drafted": steps.drafted, "accepted": steps.accepted,
        "acceptance_rate": round(steps.accepted / steps.drafted, 4) if steps.drafted else 0.0,
        "target_steps": steps.target_steps,
        # the prompt's step makes the first token; every later target step is a decode step
        "tokens_per_target_step": round(produced / max(1, steps.target_steps - 1), 3),
    }
    if decode_seconds:
        figures["decode_tok_s"] = round(max(produced - 1, 0) / decode_seconds, 2)
    return figures


class _Abort(Exception):
    """Raised inside a host call to unwind the guest; the reason is in the request's Session."""


class TenantSandbox:
    """Runs guest requests for one tenant on a shared model, each in its own Store under `limits`."""

    def __init__(self, model: Model, limits: Limits | None = None, tenant: str = "") -> None:
        self.model = model
        self.limits = (limits or Limits()).validate()
        self.tenant = tenant

    def run(self, guest: GuestModule, request: Mapping[str, Any],
            on_text: Callable[[str], None] | None = None,
            open_draft: Callable[[str], Model | None] | None = None,
            adapters: Mapping[str, AdapterBinding] | None = None,
            cancel: threading.Event | None = None) -> RunResult:
        """Run the guest's entry point on the request (passed as JSON); stream emitted text to on_text.

        Raises QuotaExceeded when a limit ends the request, RequestCancelled when `cancel` is set
        (seen at the guest's next host call), and GuestError when the guest traps, breaks the ABI
        or returns a non-zero status; each carries the partial RunResult as `.result`. Nothing
        outside this request is affected. `open_draft` resolves the draft models the request may
        open (speculative decoding); by default none. `adapters` are the LoRA adapters its guest
        may find by alias (the tenant's bindings, or an ad-hoc run's --lora).
        """
        payload = json.dumps(request, ensure_ascii=False).encode()
        session = Session(self.model, self.limits, on_text, self.tenant, open_draft, adapters)
        if cancel is not None:
            session.cancelled = cancel  # a step the request waits for in the scheduler is withdrawn too
        store = self._store()
        started = time.perf_counter()
        status = Status.INTERNAL
        error: RealmError | None = None
        try:
            status = self._call(store, session, guest, payload, cancel)
        except Exception as exc:  # noqa: BLE001  every failure is attributed to this request below
            error = self._explain(session, store, exc)
        finally:
            session.close_all()
            session.finish_output()
        report = session.report
        result = RunResult(session.text(), int(status), session.trace, session.logs,
                           self.limits.fuel - _fuel_left(store), time.perf_counter() - started, session.tokens_fed,
                           session.steps, *((report.finish_reason, report.prompt_tokens, report.completion_tokens)
                                            if report else (None, None, None)), session.logprobs)
        if error is None and status != Status.OK:
            error = GuestError(_status_message(int(status), session))
        if error is not None:
            error.result = result  # type: ignore[attr-defined]
            raise error
        return result

    def _store(self) -> wasmtime.Store:
        store = wasmtime.Store(engine())
        store.set_limits(memory_size=self.limits.memory_bytes, table_elements=MAX_TABLE_ELEMENTS,
                         instances=1, tables=4, memories=1)
        store.set_fuel(self.limits.fuel)
        store.set_epoch_deadline(int(self.limits.wall_seconds / EPOCH_TICK_S) + 1)
        return store

    def _call(self, store: wasmtime.Store, session: Session, guest: GuestModule, request: bytes,
              cancel: threading.Event | None) -> int:
        linker = wasmtime.Linker(engine())
        for fn in HOST_FUNCTIONS.values():
            linker.define_func(IMPORT_MODULE, fn.name, _func_type(len(fn.params)), _bind(session, fn, cancel),
                               access_caller=True)
        instance = linker.instantiate(store, guest.module)
        session.check_deadline()  # the start function ran
        session.memory = _export(store, instance, MEMORY_EXPORT)
        ptr = _export(store, instance, ALLOC_EXPORT)(store, len(request))
        session.check_deadline()
        mem = GuestMemory(session.memory, store)
        if ptr == 0 and request:
            raise GuestError(f"guest could not allocate {len(request)} bytes for the request")
        try:
            mem.write(ptr, request)
        except AbiError:
            raise GuestError(f"{ALLOC_EXPORT} returned a pointer outside guest memory: {ptr}") from None
        status = _export(store, instance, ENTRY_EXPORT)(store, ptr, len(request))
        session.check_deadline()  # a request over its wall clock never reports success
        return status

    def _explain(self, session: Session, store: wasmtime.Store, exc: Exception) -> RealmError:
        """The request's error: what a host call recorded, else what the trap or error says."""
        if session.failure is not None:
            return session.failure
        if isinstance(exc, RealmError):
            return exc
        if isinstance(exc, _Abort):
            # wasmtime-py hands a host call's exception to whichever thread traps next; this one
            # is another request's, so all that is known here is that this guest trapped.
            return GuestError("guest trapped")
        if isinstance(exc, wasmtime.Trap):
            code = exc.trap_code
            if code == wasmtime.TrapCode.OUT_OF_FUEL:
                return QuotaExceeded(f"guest used up its CPU budget of {self.limits.fuel} fuel")
            if code == wasmtime.TrapCode.INTERRUPT:
                return QuotaExceeded(f"request exceeded its wall-clock limit of {self.limits.wall_seconds:g} s")
            message = f"guest trapped: {_last_line(exc)}"
            if _memory_full(session, store, self.limits.memory_bytes):
                message += f" (its memory is at the {self.limits.memory_bytes} byte limit)"
            return GuestError(message)
        text = _last_line(exc)
        if isinstance(exc, wasmtime.WasmtimeError) and "limit" in text.lower():
            if "memory" in text:
                return QuotaExceeded(f"guest needs more than its memory limit of {self.limits.memory_bytes} bytes")
            if "table" in text:
                return QuotaExceeded(f"guest needs more than the limit of {MAX_TABLE_ELEMENTS} table elements")
        return GuestError(f"guest failed: {text}")


def _export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """One export by name. Instance.exports() would wrap every export of the module first."""
    raw = name.encode()
    item = ffi.wasmtime_extern_t()
    if not ffi.wasmtime_instance_export_get(store._context(), ctypes.byref(instance._instance), raw, len(raw),
                                            ctypes.byref(item)):
        raise GuestError(f"module has no export {name!r}")
    return wrap_extern(item)


_FUNC_TYPES: dict[int, wasmtime.FuncType] = {}


def _func_type(n_params: int) -> wasmtime.FuncType:
    if n_params not in _FUNC_TYPES:
        _FUNC_TYPES[n_params] = wasmtime.FuncType([wasmtime.ValType.i32()] * n_params, [wasmtime.ValType.i32()])
    return _FUNC_TYPES[n_params]


def _bind(session: Session, fn: HostFunction, cancel: threading.Event | None) -> Callable[..., int]:
    """The wasm-facing wrapper of one host function for one request: cancellation, deadline, errors, trace."""
    impl, name = fn.impl, fn.name
    stats = session.trace.setdefault(name, CallStats())
    clock = time.perf_counter

    grows = fn.grows

    def call(caller: wasmtime.Caller, *args: int) -> int:
        if cancel is not None and cancel.is_set():
            session.failure = RequestCancelled("request cancelled")
            raise _Abort(name)
        started = clock()
        try:
            session.enter()
            with np.errstate(all="ignore"):  # guest-chosen values overflow; results are checked, not warned
                result = impl(session, GuestMemory(session.memory, caller), *args)
            if grows:
                session.check_host_memory()
            session.check_deadline()  # a call that ran past the deadline ends the request here
            return result
        except AbiError as exc:
            session.last_error = f"{name}: {exc}"
            return int(exc.status)
        except (QuotaExceeded, BackendError, RequestCancelled) as exc:
            session.failure = exc
        except RealmError as exc:  # the engine refused the call: its error class says which status
            session.last_error = f"{name}: {exc}"
            return int(status_of(exc))
        except Exception as exc:  # noqa: BLE001  a host bug must end this request, not the host
            session.failure = GuestError(f"host function {name} failed: {type(exc).__name__}: {exc}")
        finally:
            stats.calls += 1
            stats.seconds += clock() - started
        raise _Abort(name)

    return call


def _status_message(status: int, session: Session) -> str:
    """Why a guest returned a failing status, in its own words first (the last error it logged, as
    realm_fail does), then the status and the last host error it got, if any."""
    reason = next((text for level, text in reversed(session.logs) if level == LOG_ERROR and text.strip()), "")
    host = f"last host error: {session.last_error}" if session.last_error else ""
    if reason:
        name = Status(status).name if status in Status._value2member_map_ else str(status)
        return f"{_printable_line(reason)} (guest status {name}" + (f"; {host})" if host else ")")
    return f"guest returned status {Status.describe(status)}" + (f" ({host})" if host else "")


def _printable_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Guest text made fit for one line of an operator's terminal: no control characters, bounded."""
    line = "".join(ch if ch.isprintable() else " " for ch in text[: limit + 1]).strip()
    return line if len(line) <= limit else line[:limit] + "..."


def _fuel_left(store: wasmtime.Store) -> int:
    try:
        return store.get_fuel()
    except wasmtime.WasmtimeError:
        return 0


def _memory_full(session: Session, store: wasmtime.Store, cap: int) -> bool:
    if session.memory is None:
        return False
    try:
        return session.memory.data_len(store) + 65536 > cap
    except wasmtime.WasmtimeError:
        return False
