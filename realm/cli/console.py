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


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit with status 1 here; the CLI's one handler ends every command alike (141).
        self.quiet = True
        raise OutputClosed


def stdout_console() -> Console:
    """The console for tables and results on stdout."""
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return _Console(width=UNBOUNDED_WIDTH if piped else None)


def stderr_console() -> Console:
    """The console for progress and notices on stderr (never part of a command's result)."""
    piped = not sys.stderr.isatty() and "COLUMNS" not in os.environ
    return _Console(stderr=True, width=UNBOUNDED_WIDTH if piped else None)


class OutputClosed(BaseException):
    """stdout's reader went away while a guest streamed text.

    A BaseException, like KeyboardInterrupt, so that it unwinds through the sandbox's host-call
    wrapper (which turns every Exception into that request's error) and ends the command quietly.
    """


def write_stdout(text: str) -> None:
    """Write and flush streamed text; OutputClosed if the reader has gone (`realm run ... | head`)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None
