"""The tests run without the REALM_* settings of the shell that started pytest."""

from __future__ import annotations

import os


def drop_shell_settings() -> None:
    """Remove from os.environ the REALM_* variables that would change what a test runs (a model, a
    backend, threads, a kernel variant, an admin key). Called before any test module is imported, as
    some read them at import. REALM_CACHE stays: where the caches live changes nothing a test sees,
    and it may be the only writable place."""
    for name in [n for n in os.environ if n.startswith("REALM_") and n != "REALM_CACHE"]:
        del os.environ[name]
