"""The `realm` command line: a click group of commands, each module one family of commands.

Every RealmError a command raises becomes one line `Error: ...` on stderr and exit status 1.
"""

from __future__ import annotations

from typing import Any

import click

from realm import __version__
from host_functions.errors import RealmError

class RealmGroup(click.Group):
    """A click group that reports RealmError as a clean one-line error instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RealmError as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            raise click.ClickException("out of memory") from None

@click.group(cls=RealmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="realm")
def main() -> None:
    """Realm: sandboxed WebAssembly tenants driving shared GGUF language models."""


from realm.cli import model as _model  # noqa: E402,F401  (registers its commands on `main`)
from realm.cli import kernels as _kernels  # noqa: E402,F401  (registers `realm kernels`)
from realm.cli import run as _run, tenant as _tenant  # noqa: E402,F401  (the sandbox commands)
from realm.cli import batch as _batch  # noqa: E402,F401  (`realm batch`)
