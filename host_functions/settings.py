"""Every environment variable Realm reads, in one place: its name, its default and what it means.

- `REALM_HOME`: tenant data: registry, deployed and compiled guest modules.
  Default `$XDG_DATA_HOME/realm` (the platform's data dir).
- `REALM_CACHE`: caches: GGUF metadata indexes, the built cpu kernels.
  Default `$XDG_CACHE_HOME/realm`, `~/.cache/realm`.
- `REALM_MODEL`: the model every command uses without `--model`. Default the bundled Gemma 3 270M Q4_K_M.
- `REALM_BACKEND`: the backend without `--backend`. Default `auto`.
- `REALM_THREADS`: threads of the cpu backend's kernels without `--threads`. Default every CPU the process
  may use.
- `REALM_CPU_KERNELS`: the cpu kernel variant (`portable`, `avx2`, ...). Default the fastest this CPU runs.
- `REALM_REGISTRY_URL`: the tenant registry every server and `realm tenant` command uses without
  `--registry`: `sqlite:///ABS/PATH.db` or `postgresql://USER@HOST:PORT/DB` (docs/registry.md).
  Default `sqlite:///$REALM_HOME/realm.db`.
- `REALM_ADMIN_KEY`: the admin key of `realm serve` without `--admin-key-file`. Default none: the admin
  API is off.

Each is read when asked for (not at import), so a process may set them before it uses Realm.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from host_functions.errors import RealmError

HOME = "REALM_HOME"
CACHE = "REALM_CACHE"
MODEL = "REALM_MODEL"
BACKEND = "REALM_BACKEND"
THREADS = "REALM_THREADS"
CPU_KERNELS = "REALM_CPU_KERNELS"
ADMIN_KEY = "REALM_ADMIN_KEY"
REGISTRY_URL = "REALM_REGISTRY_URL"


def _get(name: str) -> str:
    return os.environ.get(name, "").strip()


def home() -> Path:
    """$REALM_HOME, else the platform's per-user data directory + /realm."""
    explicit = _get(HOME)
    return Path(explicit).expanduser() if explicit else _user_data_dir() / "realm"


def cache_dir() -> Path:
    """$REALM_CACHE, else $XDG_CACHE_HOME/realm, else ~/.cache/realm (a cache: safe to delete)."""
    explicit = _get(CACHE)
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "realm"


def model_path() -> Path | None:
    """$REALM_MODEL, or None for the bundled default model."""
    explicit = _get(MODEL)
    return Path(explicit).expanduser() if explicit else None


def backend() -> str:
    """$REALM_BACKEND, else "auto" (the value is checked where a backend is created)."""
    return _get(BACKEND) or "auto"


def threads() -> int | None:
    """$REALM_THREADS as a positive integer, or None when unset. Raises RealmError when malformed."""
    value = _get(THREADS)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise RealmError(f"{THREADS}={value!r}: expected a positive integer")
    return int(value)


def cpu_kernels() -> str:
    """$REALM_CPU_KERNELS, or "" to pick the fastest variant (checked where the kernels load)."""
    return _get(CPU_KERNELS)


def admin_key() -> str | None:
    """$REALM_ADMIN_KEY, or None."""
    return _get(ADMIN_KEY) or None


def registry_url() -> str:
    """$REALM_REGISTRY_URL, else SQLite in REALM_HOME (the URL is checked where the registry opens)."""
    return _get(REGISTRY_URL) or f"sqlite://{(home() / 'realm.db').absolute().as_posix()}"


def _user_data_dir() -> Path:
    # The conventional places, so Realm's data sits next to other tools' data on each platform.
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
