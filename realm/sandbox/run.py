"""One tenant's request in the sandbox: a Store with the request's limits, the host functions bound
to the request's Session, and the guest's entry point called on the request.

A guest gets exactly the imports of host_functions.abi (module `realm`): no WASI, so no files,
network, clock or environment. Limits are enforced by wasmtime where it can (linear-memory cap, fuel
for guest CPU, epoch interruption for wall-clock time; see realm.sandbox.engine) and by the host
functions for the rest (tokens, live sequences, output bytes, host memory, and the wall clock,
checked when each host call starts and returns and when realm_main returns). Whatever goes wrong
ends this request with a GuestRunFailed (realm.sandbox.report); the engine, the model and every
other request carry on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import wasmtime

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
    TokenLogprob,
)
from host_functions.abi.status import status_of
from host_functions.engine.model import Model
from host_functions.errors import (
    GuestError,
    RealmError,
    RequestCancelled,
)
from realm.sandbox.engine import engine, new_store
from realm.sandbox.exports import export
from realm.sandbox.intake import GuestModule
from realm.sandbox.report import REQUEST_ENDING, GuestRunFailed, RunResult, explain_wasmtime, failing_status


class _Abort(Exception):
    """Raised inside a host call to unwind the guest; the reason is in the request's Session."""


class TenantSandbox:
    """Runs guest requests for one tenant on a shared model, each in its own Store under `limits`."""

    def __init__(self, model: Model, limits: Limits | None = None, tenant: str = "") -> None:
        """Raises GuestError for limits that do not validate."""
        self.model = model
        self.limits = (limits or Limits()).validate()
        self.tenant = tenant

    def run(self, guest: GuestModule, request: Mapping[str, Any],
            on_text: Callable[[str], None] | None = None,
            open_draft: Callable[[str], Model | None] | None = None,
            adapters: Mapping[str, AdapterBinding] | None = None,
            cancel: threading.Event | None = None,
            on_logprob: Callable[[TokenLogprob], None] | None = None) -> RunResult:
        """Run the guest's entry point on the request (passed as JSON); stream emitted text to on_text
        (and each token's logprobs, as the guest reports them, to on_logprob).

        Raises GuestRunFailed, as the subclass for its cause and carrying the partial RunResult:
        GuestRunOverLimit (a QuotaExceeded) when a limit ends the request, GuestRunCancelled (a
        RequestCancelled) when `cancel` is set (seen at the guest's next host call), GuestRunError (a
        GuestError) when the guest traps, breaks the ABI or returns a non-zero status. Nothing outside
        this request is affected. `open_draft` resolves the draft models the request may open
        (speculative decoding); by default none. `adapters` are the LoRA adapters its guest may find
        by alias (the tenant's bindings, or an ad-hoc run's --lora).
        """
        payload = json.dumps(request, ensure_ascii=False).encode()
        session = Session(self.model, self.limits, on_text, self.tenant, open_draft, adapters, on_logprob)
        if cancel is not None:
            session.cancelled = cancel  # a step the request waits for in the scheduler is withdrawn too
        store = new_store(self.limits)
        started = time.perf_counter()
        status: int = Status.INTERNAL
        error: RealmError | None = None
        try:
            status = self._call(store, session, guest, payload, cancel)
        except Exception as exc:  # noqa: BLE001  every failure is attributed to this request below
            error = self._failure(session, store, exc)
        finally:
            session.close_all()
            session.finish_output()
        result = RunResult.of(session, int(status), self.limits.fuel - _fuel_left(store),
                              time.perf_counter() - started)
        if error is None and status != Status.OK:
            error = failing_status(int(status), session)
        if error is not None:
            raise GuestRunFailed.of(error, result) from error
        return result

    def _call(self, store: wasmtime.Store, session: Session, guest: GuestModule, request: bytes,
              cancel: threading.Event | None) -> int:
        linker = wasmtime.Linker(engine())
        for fn in HOST_FUNCTIONS.values():
            linker.define_func(IMPORT_MODULE, fn.name, _func_type(len(fn.params)), _bind(session, fn, cancel),
                               access_caller=True)
        instance = linker.instantiate(store, guest.module)
        session.check_deadline()  # the start function ran
        session.memory = export(store, instance, MEMORY_EXPORT)
        ptr = export(store, instance, ALLOC_EXPORT)(store, len(request))
        session.check_deadline()
        mem = GuestMemory(session.memory, store)
        if ptr == 0 and request:
            raise GuestError(f"guest could not allocate {len(request)} bytes for the request")
        try:
            mem.write(ptr, request)
        except AbiError:
            raise GuestError(f"{ALLOC_EXPORT} returned a pointer outside guest memory: {ptr}") from None
        status: int = export(store, instance, ENTRY_EXPORT)(store, ptr, len(request))
        session.check_deadline()  # a request over its wall clock never reports success
        return status

    def _failure(self, session: Session, store: wasmtime.Store, exc: Exception) -> RealmError:
        """The request's error: what a host call recorded, else what the trap or error says."""
        if session.failure is not None:
            return session.failure
        if isinstance(exc, RealmError):
            return exc
        if isinstance(exc, _Abort):
            # wasmtime-py hands a host call's exception to whichever thread traps next; this one
            # is another request's, so all that is known here is that this guest trapped.
            return GuestError("guest trapped")
        return explain_wasmtime(exc, self.limits, _memory_full(session, store, self.limits.memory_bytes))


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
        except REQUEST_ENDING as exc:
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
