"""What a test process starts from: none of the REALM_* settings of the shell that started pytest, and
a REALM_HOME of its own, so nothing the tests run reads or writes the user's Realm data."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


def start_clean(config: pytest.Config) -> None:
    """Called from pytest_configure, before any test module is imported (some read settings at import).

    Removes the REALM_* variables that would change what a test runs (a model, a backend, threads, a
    kernel variant, an admin key); REALM_CACHE stays: where the caches live changes nothing a test
    sees, and it may be the only writable place. Sets REALM_HOME to a new directory, removed at the
    end of the session: the home of whatever runs outside a test's own (module-scoped fixtures compile
    guests into REALM_HOME/compiled), where the user's would be used otherwise.
    """
    for name in [n for n in os.environ if n.startswith("REALM_") and n != "REALM_CACHE"]:
        del os.environ[name]
    home = tempfile.mkdtemp(prefix="realm-home-")
    os.environ["REALM_HOME"] = home
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
