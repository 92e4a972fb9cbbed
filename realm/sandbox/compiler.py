"""Compiling guests: in a worker process under a memory and CPU budget, once per module, kept on disk.

A module is host work before any request limit applies, so it is measured first (realm.sandbox.module_bounds)
and then compiled by `python -m realm.sandbox.compiler` in a child process with RLIMIT_AS and
RLIMIT_CPU set and a wall-clock timeout: a module that needs more ends the child, never the host,
and is refused with a GuestError. The child returns `Module.serialize()`; the host stores it under
REALM_HOME/compiled/, keyed by the module's SHA-256, the wasmtime version and the engine settings,
and deserializes it, so a run never compiles a module that was compiled before.

Both processes build their Engine from realm.sandbox.engine's `engine_config()`: a serialized module
only loads into an engine with the settings it was compiled for.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import wasmtime

from host_functions import settings
from host_functions.errors import GuestError
from realm.sandbox.engine import SETTINGS_DIGEST, engine_config
from realm.sandbox.module_bounds import measure

COMPILE_MEMORY_BYTES = 2 << 30  # the worker's address space: Python, wasmtime and Cranelift's work
COMPILE_CPU_SECONDS = 20
COMPILE_WALL_SECONDS = 60  # a loaded machine may give the worker less than one core

_CACHE_KEY = f"wasmtime{version('wasmtime')}-{SETTINGS_DIGEST}"


def compiled_path(sha256: str) -> Path:
    """Where the compiled form of the module with this hash is kept."""
    return settings.home() / "compiled" / f"{sha256}-{_CACHE_KEY}.cwasm"


def load_or_compile(wasm: bytes, sha256: str, engine: wasmtime.Engine, import_module: str) -> wasmtime.Module:
    """The module compiled for `engine`: from the on-disk cache, else compiled in a worker and cached.

    Raises GuestError if the module exceeds a bound of realm.sandbox.module_bounds (or imports from another
    module than `import_module`), does not compile, or needs more than the worker's memory or time.
    """
    path = compiled_path(sha256)
    blob = _read_cached(path)
    if blob is None:
        blob = _compile_in_worker(wasm, import_module)
        _write_cached(path, blob)
    try:
        return wasmtime.Module.deserialize(engine, blob)
    except wasmtime.WasmtimeError as exc:
        raise GuestError(f"compiled module does not load: {str(exc).strip().splitlines()[0]}") from None


def _compile_in_worker(wasm: bytes, import_module: str) -> bytes:
    try:
        done = subprocess.run([sys.executable, "-m", "realm.sandbox.compiler", import_module], input=wasm,
                              capture_output=True, timeout=COMPILE_WALL_SECONDS, env=_WORKER_ENV,
                              preexec_fn=_limit_worker if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        raise GuestError(f"module takes over {COMPILE_WALL_SECONDS} s to compile") from None
    if done.returncode == 0:
        return done.stdout
    reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if done.returncode == 2 and reason:  # the worker's own one-line GuestError
        raise GuestError(reason[-1])
    raise GuestError(f"module needs more than {COMPILE_MEMORY_BYTES >> 20} MiB of memory or "
                     f"{COMPILE_CPU_SECONDS} s of CPU to compile")


# One compile thread and few malloc arenas: RLIMIT_AS counts address space, which every extra
# thread's stack and arena reserves whether or not it is used.
_WORKER_ENV = {**os.environ, "RAYON_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                           os.environ.get("PYTHONPATH")]))}


def _limit_worker() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (COMPILE_MEMORY_BYTES, COMPILE_MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (COMPILE_CPU_SECONDS, COMPILE_CPU_SECONDS))


# The cache file is the SHA-256 of the serialized module, then the module: deserializing trusts its
# input, so a damaged file is detected and compiled again rather than loaded.
def _read_cached(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    blob = data[32:]
    return blob if hashlib.sha256(blob).digest() == data[:32] else None


def _write_cached(path: Path, blob: bytes) -> None:
    """Write atomically; a cache that cannot be written only costs a compile next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".compile-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(blob).digest() + blob)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass


def _worker(import_module: str) -> int:
    """Read a module on stdin, measure and compile it, write its serialized form to stdout.

    The worker imports no more than wasmtime, the engine's settings and the bounds reader: it starts in
    a fraction of a second.
    """
    wasm = sys.stdin.buffer.read()
    try:
        measure(wasm, import_module)
        module = wasmtime.Module(wasmtime.Engine(engine_config()), wasm)
    except GuestError as exc:
        print(exc, file=sys.stderr)
        return 2
    except wasmtime.WasmtimeError as exc:
        print(f"module does not compile: {_cause(exc)}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(module.serialize())
    return 0


def _cause(exc: Exception) -> str:
    """wasmtime's innermost cause ("memory64 must be enabled ..."), the last line of its chain."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return re.sub(r"^\d+: ", "", lines[-1]) if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
