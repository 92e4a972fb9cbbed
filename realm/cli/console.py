"""Where the CLI writes: rich consoles for tables (stdout) and notices (stderr).

On a terminal a table fits the window. Piped or redirected, rich would assume 80 columns and clip
or fold long cells (hashes, paths), so the width there is unbounded unless COLUMNS asks otherwise:
a script reading the output gets every character.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

UNBOUNDED_WIDTH = 100_000  # wider than any row a table of ours has; rich sizes the table to its content


def stdout_console() -> Console:
    """The console for tables and results on stdout."""
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=UNBOUNDED_WIDTH if piped else None)


def stderr_console() -> Console:
    """The console for progress and notices on stderr (never part of a command's result)."""
    piped = not sys.stderr.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=True, width=UNBOUNDED_WIDTH if piped else None)
