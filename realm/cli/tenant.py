"""`realm tenant create|deploy|list|show|set-limits|delete`: the tenant registry from the command line."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
from rich.table import Table

from realm.cli import main
from host_functions.errors import TenantError
from realm.cli.console import stdout_console
from realm.tenants import NAME_RULE, Tenant, TenantRegistry, parse_limits

console = stdout_console()
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@main.group()
def tenant() -> None:
    """Manage tenants and the guest modules they run."""


@tenant.command(help=f"Register a new tenant NAME: {NAME_RULE}.")
@click.argument("name")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="Override a limit, e.g. --limit fuel=500000000 (repeatable; see `realm tenant show`).")
def create(name: str, limits: tuple[str, ...]) -> None:
    """Register a tenant (the help text, from NAME_RULE, says which names are allowed)."""
    created = TenantRegistry().create(name, parse_limits(_pairs(limits)))
    click.echo(f"created tenant {created.name}")


@tenant.command()
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def deploy(name: str, file: Path) -> None:
    """Check FILE (.wasm or .wat) and make it tenant NAME's guest; the old one serves until then."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise TenantError(f"cannot read {file}: {exc}") from None
    deployed = TenantRegistry().deploy(name, data)
    click.echo(f"deployed {file.name} to {deployed.name} (sha256 {deployed.module_sha256}, "
               f"{deployed.module_size} bytes)")


@tenant.command("list")
@json_option
def list_tenants(as_json: bool) -> None:
    """List tenants."""
    tenants = TenantRegistry().list()
    if as_json:
        click.echo(json.dumps([t.as_json() for t in tenants]))
        return
    table = Table("name", "module sha256", "bytes", "deployed", title="tenants")
    for t in tenants:
        table.add_row(t.name, (t.module_sha256 or "-")[:16], str(t.module_size or "-"), _when(t.deployed_at))
    console.print(table)


@tenant.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show tenant NAME: its module and limits."""
    t = TenantRegistry().get(name)
    if as_json:
        click.echo(json.dumps(t.as_json()))
        return
    console.print(_detail(t))


@tenant.command("set-limits")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True, metavar="LIMIT=VALUE...")
def set_limits(name: str, pairs: tuple[str, ...]) -> None:
    """Change some of tenant NAME's limits, e.g. `realm tenant set-limits acme wall_seconds=60`."""
    overrides = _pairs(pairs, "LIMIT=VALUE")
    changed = TenantRegistry().set_limits(name, overrides)
    shown = ", ".join(f"{key}={getattr(changed.limits, key)}" for key in overrides)
    click.echo(f"tenant {changed.name}: {shown}")


@tenant.command()
@click.argument("name")
def delete(name: str) -> None:
    """Delete tenant NAME, and its module file unless another tenant serves the same module."""
    TenantRegistry().delete(name)
    click.echo(f"deleted tenant {name}")


def _detail(t: Tenant) -> Table:
    table = Table(show_header=False, title=f"tenant {t.name}")
    table.add_row("created", _when(t.created_at))
    table.add_row("module sha256", t.module_sha256 or "- (not deployed)")
    table.add_row("module bytes", str(t.module_size or "-"))
    table.add_row("deployed", _when(t.deployed_at))
    for name, value in dataclasses.asdict(t.limits).items():
        table.add_row(f"limit {name}", f"{value:g}" if isinstance(value, float) else str(value))
    return table


def _pairs(items: tuple[str, ...], where: str = "--limit") -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint=where)
        pairs[name.strip()] = value.strip()
    return pairs


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"
