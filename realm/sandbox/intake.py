"""Module intake: what a guest module must be before it may run, and the reference guest.

A module arrives as WebAssembly binary or WAT text; it is measured and compiled in a limited worker
(realm.sandbox.compiler), then its interface is checked against the ABI: every import one of the
host functions with its exact signature, and the three exports the sandbox calls. Compiled guests
are kept by content hash, in memory here and on disk by the compiler.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

from host_functions.abi import ALLOC_EXPORT, ENTRY_EXPORT, HOST_FUNCTIONS, IMPORT_MODULE, MEMORY_EXPORT
from host_functions.errors import GuestError
from realm.sandbox.compiler import load_or_compile
from realm.sandbox.engine import engine

MAX_MODULE_BYTES = 8 << 20  # a guest is a controller, not a model: 8 MiB is generous
REFERENCE_GUEST = "generate"  # the guest a request runs unless its tenant deployed another
_MODULE_CACHE_SIZE = 64

_I32 = "i32"
_EXPORTS = {ALLOC_EXPORT: ((_I32,), (_I32,)), ENTRY_EXPORT: ((_I32, _I32), (_I32,))}
# WAT text may open with whitespace and comments (`;; line`, `(; block ;)`) before the module.
_WAT_START = re.compile(r"(?:\s|;;[^\n]*(?:\n|$)|\(;(?:[^;]|;(?!\)))*;\))*\(")

_modules: OrderedDict[str, GuestModule] = OrderedDict()
_modules_lock = threading.Lock()


@dataclass(frozen=True)
class GuestModule:
    """A validated, compiled guest: its SHA-256 (of the binary form) and wasmtime Module."""

    sha256: str
    size: int
    module: wasmtime.Module = field(repr=False)


def reference_guest_path(name: str = REFERENCE_GUEST) -> Path:
    """The built guest `name`.wasm shipped with Realm: guest/ in a source tree, realm/guests/ when installed.

    Raises GuestError if it is not built."""
    here = Path(__file__).resolve().parents[1]  # realm/
    for folder in (here.parent / "guest", here / "guests"):
        if (folder / f"{name}.wasm").is_file():
            return folder / f"{name}.wasm"
    raise GuestError(f"the built-in guest {name!r} is missing (run scripts/build_guests.py)")


@functools.cache
def reference_guest(name: str = REFERENCE_GUEST) -> GuestModule:
    """The built guest `name`, compiled once per process; GuestError if it is missing."""
    return compile_guest(reference_guest_path(name).read_bytes())


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
    known = compiled_guest(digest)
    if known is not None:
        return known
    module = load_or_compile(wasm, digest, engine(), IMPORT_MODULE)
    check_interface(module)
    guest = GuestModule(digest, len(wasm), module)
    with _modules_lock:
        _modules[digest] = guest
        while len(_modules) > _MODULE_CACHE_SIZE:
            _modules.popitem(last=False)
    return guest


def compiled_guest(sha256: str) -> GuestModule | None:
    """The guest with this SHA-256 if compile_guest has it in memory, else None."""
    with _modules_lock:
        guest = _modules.get(sha256)
        if guest is not None:
            _modules.move_to_end(sha256)
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
