"""The `realm` command line: a click group of commands, each module one family of commands.

Every error is one line `Error: ...` on stderr: a RealmError (or any ClickException) exits with
status 1, a usage error (a bad flag, argument or prompt) with status 2. Unix manners: Ctrl-C ends
a command with status 130 and no traceback (what was printed stays); a reader that goes away
(`realm ... | head`) ends it quietly with status 141, as SIGPIPE would.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from host_functions.errors import RealmError
from realm import __version__
from realm.cli.console import OutputClosed

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


# Each command's module, imported when the command is asked for: `realm bench` then never loads the
# server's or the sandbox's libraries, whose resident memory would count beside the model's
# (docs/cpu_backend.md, "Memory").
COMMAND_MODULES = {
    "inspect": "model", "tokenize": "model", "logits": "model", "bench": "model", "kernels": "kernels",
    "run": "run", "tenant": "tenant", "chat": "chat", "serve": "serve", "batch": "batch",
}


class RealmGroup(click.Group):
    """A click group whose errors are one line each, never a traceback, with Unix exit statuses."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"realm.cli.{module}")  # registers its commands on `main`
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(COMMAND_MODULES.values())):
            importlib.import_module(f"realm.cli.{module}")
        return super().list_commands(ctx)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command line; in standalone mode every error is one line (click's usage errors
        would print the usage and a hint on lines of their own)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C or end of input at one of click's own prompts
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(status if isinstance(status, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RealmError as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            raise click.ClickException("out of memory") from None
        except KeyboardInterrupt:
            _exit_interrupted()
        except (BrokenPipeError, OutputClosed):
            _exit_broken_pipe()


def _exit_interrupted() -> NoReturn:
    try:
        sys.stdout.flush()  # what was printed stays printed
    except OSError:
        pass
    click.echo("\nInterrupted", err=True)
    raise SystemExit(EXIT_INTERRUPTED)


def _exit_broken_pipe() -> NoReturn:
    # Point stdout at /dev/null so the interpreter's final flush does not fail a second time.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in a test)
        pass
    raise SystemExit(EXIT_BROKEN_PIPE)


@click.group(cls=RealmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="realm")
def main() -> None:
    """Realm: sandboxed WebAssembly tenants driving shared GGUF language models."""
    _one_malloc_arena()


def _one_malloc_arena() -> None:
    # glibc gives every thread that allocates its own malloc arena, so the scheduler's step thread would
    # hold a second set of a step's temporaries (docs/cpu_backend.md, "Memory"). Elsewhere (musl,
    # macOS) there is no mallopt and nothing to do.
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass


_M_ARENA_MAX = -8  # glibc's malloc.h


