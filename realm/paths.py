"""Where Realm keeps its own files: `REALM_HOME`, else the user's data directory.

Layout under the home directory:
    realm.db     the tenant registry (SQLite)
    modules/     deployed guest modules, named by the SHA-256 of their bytes
    compiled/    their compiled forms (Module.serialize), by SHA-256, wasmtime version and engine settings
"""

from __future__ import annotations

from pathlib import Path

from host_functions import settings


def realm_home() -> Path:
    """The data directory: $REALM_HOME if set, else the platform's per-user data directory + /realm."""
    return settings.home()


def registry_path() -> Path:
    """The SQLite tenant registry."""
    return realm_home() / "realm.db"


def modules_dir() -> Path:
    """Deployed guest modules, one file per content hash."""
    return realm_home() / "modules"
