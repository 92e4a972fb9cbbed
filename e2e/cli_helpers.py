"""Assertions the e2e tests share about what a `realm` subprocess printed."""

from __future__ import annotations

import subprocess


def one_error_line(done: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    """Assert `done` failed with `status` and exactly one stderr line `Error: ...` holding every fragment."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
