"""The process's kernel library: built and loaded once per variant, shared by every backend, and
the thread count its pool runs on."""

from __future__ import annotations

import os
import threading

from host_functions import settings
from host_functions.errors import BackendError
from host_functions.native.binding import Kernels
from host_functions.native.build import build
from host_functions.native.variants import select_variant

_loaded: dict[str, Kernels] = {}
_load_lock = threading.Lock()
_default_threads: int | None = None


def set_default_threads(n: int) -> None:
    """Make n the thread count of every later load() without an explicit count (the --threads option),
    and of the already loaded libraries."""
    global _default_threads
    _default_threads = n
    with _load_lock:
        for kernels in _loaded.values():
            kernels.set_threads(n)


def default_threads() -> int:
    """set_default_threads()'s count, else REALM_THREADS if set (a positive integer), else the number
    of CPUs this process may use. Raises RealmError for a malformed REALM_THREADS."""
    if _default_threads is not None:
        return _default_threads
    configured = settings.threads()
    if configured is not None:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load(threads: int | None = None) -> Kernels:
    """The process's kernel library (built on first use), running on `threads` threads (default:
    default_threads()). Raises BackendError when it cannot be selected, built or loaded."""
    variant = select_variant()
    with _load_lock:
        kernels = _loaded.get(variant.name)
        if kernels is None:
            try:
                kernels = Kernels(variant, build(variant))
            except OSError as exc:
                raise BackendError(f"cannot load the cpu kernels: {exc}") from exc
            _loaded[variant.name] = kernels
    want = threads if threads is not None else default_threads()
    if kernels.threads != want:
        kernels.set_threads(want)
    return kernels
