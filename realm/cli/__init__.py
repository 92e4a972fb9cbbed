"""The `realm` command line: a click group of commands, each module one family of commands."""

from __future__ import annotations

import click

from realm import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="realm")
def main() -> None:
    """Realm: sandboxed WebAssembly tenants driving shared GGUF language models."""
