"""Where Realm keeps its own files: `REALM_HOME`, else the user's data directory.

Layout under the home directory:
    realm.db     the tenant registry (SQLite)
    modules/     deployed guest modules, named by the SHA-256 of their bytes
    compiled/    their compiled forms (Module.serialize), by SHA-256, wasmtime version and engine settings
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def realm_home() -> Path:
    """The data directory: $REALM_HOME if set, else the platform's per-user data directory + /realm."""
    explicit = os.environ.get("REALM_HOME")
    if explicit:
        return Path(explicit).expanduser()
    return _user_data_dir() / "realm"


def registry_path() -> Path:
    """The SQLite tenant registry."""
    return realm_home() / "realm.db"


def modules_dir() -> Path:
    """Deployed guest modules, one file per content hash."""
    return realm_home() / "modules"


def _user_data_dir() -> Path:
    # The conventional places, so Realm's data sits next to other tools' data on each platform.
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
