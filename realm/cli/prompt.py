"""Where `realm run` gets its prompt: the PROMPT argument, `--file PATH`, or stdin (`-`, or a pipe).

A prompt is UTF-8 text. Bytes that are not (an argument the shell passed raw, a Latin-1 file) are
refused with the position of the first bad byte, before anything is loaded. A prompt is never
awaited silently: with no prompt given and a terminal on stdin, that is a usage error, and `-` on a
terminal says that it is reading.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

STDIN = "-"


def read_prompt(argument: str | None, file: str | None) -> str:
    """The prompt text from exactly one source; click.UsageError or click.BadParameter otherwise."""
    if argument is not None and file is not None:
        raise click.UsageError("give the prompt as PROMPT or --file PATH, not both")
    if file is not None:
        return _from_stdin() if file == STDIN else _from_file(Path(file))
    if argument == STDIN:
        return _from_stdin()
    if argument is not None:
        return text_argument(argument, "the prompt argument")
    if _stdin_is_terminal():
        raise click.UsageError("no prompt: give PROMPT, --file PATH, or - to read it from stdin")
    return _from_stdin()


def text_argument(value: str, what: str) -> str:
    """A command-line argument checked to be UTF-8 text; click.BadParameter naming the bad byte.

    On POSIX, click hands over argv bytes that do not decode as surrogate escapes; os.fsencode
    gives back the bytes the shell passed.
    """
    return decode_utf8(os.fsencode(value) if os.name == "posix" else value.encode("utf-8", "replace"), what)


def decode_utf8(data: bytes, what: str) -> str:
    """`data` as text; click.BadParameter naming the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                 f"{exc.start})") from None


def _from_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="--file") from None
    return decode_utf8(data, str(path))


def _from_stdin() -> str:
    if sys.stdin is None:
        raise click.UsageError("stdin is closed: give PROMPT or --file PATH")
    if _stdin_is_terminal():
        click.echo("reading the prompt from the terminal; end it with Ctrl-D", err=True)
    return decode_utf8(sys.stdin.buffer.read(), "the prompt on stdin")


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        return False
