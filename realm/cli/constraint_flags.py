"""`realm run`'s --json-schema FILE, --regex RE and --grammar FILE: one request "constraint" field."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_FLAGS = (("--json-schema", "json_schema", "json_schema", "FILE", "Constrain the output to the JSON Schema in FILE."),
          ("--regex", "regex", "regex", "RE", "Constrain the output to match the regular expression RE."),
          ("--grammar", "grammar", "lark", "FILE", "Constrain the output to the Lark grammar in FILE "
                                                    "(llguidance's dialect)."))


def constraint_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the three flags, given to `func` as `constraint`: None, or {"kind": ..., "text": ...}."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        given = [(flag, kind, kwargs.pop(name)) for flag, name, kind, _, _ in _FLAGS]
        chosen = [(flag, kind, value) for flag, kind, value in given if value is not None]
        if len(chosen) > 1:
            raise click.UsageError(f"{' and '.join(f for f, _, _ in chosen)} are alternatives: give one")
        kwargs["constraint"] = _constraint(*chosen[0]) if chosen else None
        return func(**kwargs)

    for flag, name, _, metavar, help_text in reversed(_FLAGS):
        wrapper = click.option(flag, name, metavar=metavar, default=None, help=help_text)(wrapper)
    return wrapper


def _constraint(flag: str, kind: str, value: str) -> dict[str, str]:
    if kind == "regex":
        return {"kind": kind, "text": value}
    try:
        return {"kind": kind, "text": Path(value).read_text(encoding="utf-8")}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a readable UTF-8 file"
        raise click.BadParameter(f"{value}: {reason}", param_hint=flag) from None
