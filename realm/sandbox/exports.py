"""One export of an instance by name: the one place that uses wasmtime-py's private API.

The public way, `Instance.exports(store)`, wraps every export of the module when first asked; a
request needs three. wasmtime's C API fetches one by name (`wasmtime_instance_export_get`), but
wasmtime-py reaches it only through its private modules `_ffi` and `_extern`, which any release may
change. So they are loaded here, if present, and the first call that finds them changed (a missing
attribute, another signature) switches the process to the public API.
"""

from __future__ import annotations

import ctypes
import importlib
from types import ModuleType
from typing import Any

import wasmtime

from host_functions.errors import GuestError


def _load_private() -> tuple[ModuleType, Any] | None:
    """wasmtime-py's C binding and its extern wrapper, or None where this wasmtime-py lacks them."""
    try:
        return importlib.import_module("wasmtime._ffi"), importlib.import_module("wasmtime._extern").wrap_extern
    except (ImportError, AttributeError):
        return None


_private = _load_private()


def export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """The export `name` of `instance` (a Func or Memory); GuestError if the module has none."""
    global _private
    if _private is not None:
        try:
            return _private_export(_private, store, instance, name)
        except (AttributeError, TypeError, ctypes.ArgumentError):  # the private API changed: use the public one
            _private = None
    found = instance.exports(store).get(name)
    if found is None:
        raise GuestError(f"module has no export {name!r}")
    return found


def _private_export(private: tuple[ModuleType, Any], store: wasmtime.Store, instance: wasmtime.Instance,
                    name: str) -> Any:
    ffi, wrap_extern = private
    raw = name.encode()
    item = ffi.wasmtime_extern_t()
    if not ffi.wasmtime_instance_export_get(store._context(), ctypes.byref(instance._instance), raw, len(raw),
                                            ctypes.byref(item)):
        raise GuestError(f"module has no export {name!r}")
    return wrap_extern(item)
