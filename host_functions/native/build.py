"""Compiling the C sources in this folder, on the user's machine, into a cache of libraries.

The sources are built with the `ziglang` package's clang (`python -m ziglang cc`) the first time they
are needed, once per variant, into native/ in Realm's cache (~/.cache/realm, or $REALM_CACHE), named by a
hash of the sources, the flags and the compiler version, so an edited source or a new compiler
rebuilds and nothing stale is ever loaded. Binaries are never shipped. A build says so on stderr in
one line, since a first command waits for it (about half a minute; zig's own cache makes later
builds of unchanged sources take a second).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from host_functions import settings
from host_functions.errors import BackendError
from host_functions.native.variants import Variant

SOURCE_DIR = Path(__file__).parent

COMPILE_NOTICE = "realm: compiling native kernels for this CPU ({variant}; once, about 30 s)"
_build_lock = threading.Lock()  # one compile at a time, so the notice shows once per library

CFLAGS = ("-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-Wall", "-Wextra",
          "-Werror")


def _sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c")) + sorted(SOURCE_DIR.glob("*.h"))


def _zig_version() -> str:
    import ziglang  # the package is a runtime dependency; its version names the compiler

    return getattr(ziglang, "__version__", "") or _zig(["version"]).strip()


def _zig(args: list[str]) -> str:
    try:
        out = subprocess.run([sys.executable, "-m", "ziglang", *args], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"cannot run the ziglang compiler: {exc}") from exc
    if out.returncode != 0:
        first = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[0]
        raise BackendError(f"compiling the cpu kernels failed: {first}")
    return out.stdout


def cache_dir() -> Path:
    """Where built libraries live: native/ in Realm's cache (settings.cache_dir)."""
    return settings.cache_dir() / "native"


def library_path(variant: Variant) -> Path:
    """Where the built library for `variant` lives: named by a hash of everything that shapes it."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join((variant.target, variant.mcpu, *variant.defines, *CFLAGS, _zig_version())).encode())
    return cache_dir() / f"realm-kernels-{variant.name}-{digest.hexdigest()[:16]}.so"


def build(variant: Variant) -> Path:
    """Compile `variant` unless the cache has it, saying so on stderr; returns the library's path.
    BackendError on failure."""
    path = library_path(variant)
    with _build_lock:
        if not path.exists():
            print(COMPILE_NOTICE.format(variant=variant.name), file=sys.stderr, flush=True)
            _compile(variant, path)
    return path


def _compile(variant: Variant, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    c_files = [str(p) for p in _sources() if p.suffix == ".c"]
    try:
        _zig(["cc", "-target", variant.target, f"-mcpu={variant.mcpu}", *variant.defines, *CFLAGS, "-o", str(tmp),
              *c_files, "-lpthread"])
        os.replace(tmp, path)  # atomic: a concurrent build of the same hash writes the same bytes
    finally:
        tmp.unlink(missing_ok=True)
