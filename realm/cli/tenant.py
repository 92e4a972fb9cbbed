"""`realm tenant create|deploy|list|show|set-limits|set-models|delete|usage ...`: the tenant registry from
the command line, in the registry `--registry URL` (or REALM_REGISTRY_URL) names."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
from rich.table import Table

from host_functions.errors import TenantError
from realm.cli import main
from realm.cli.console import stdout_console
from realm.registry.usage import parse_since
from realm.tenants import NAME_RULE, ApiKey, RateLimits, Tenant, TenantRegistry, parse_limits

console = stdout_console()
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_REGISTRY = "realm.registry_url"


@main.group()
@click.option("--registry", "registry_url", metavar="URL",
              help="The registry: sqlite:///ABS/PATH.db or postgresql://USER@HOST/DB (docs/registry.md). "
                   "[default: $REALM_REGISTRY_URL, else SQLite in $REALM_HOME]")
@click.pass_context
def tenant(ctx: click.Context, registry_url: str | None) -> None:
    """Manage tenants and the guest modules they run."""
    ctx.meta[_REGISTRY] = registry_url


def _registry() -> TenantRegistry:
    """The registry the group's --registry names (its default otherwise)."""
    return TenantRegistry(click.get_current_context().meta.get(_REGISTRY))


@tenant.command(help=f"Register a new tenant NAME: {NAME_RULE}.")
@click.argument("name")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="Override a limit, e.g. --limit fuel=500000000 (repeatable; see `realm tenant show`).")
@click.option("--model", "models", multiple=True, metavar="MODEL",
              help="A model id the tenant may use (repeatable). [default: every model a server serves]")
def create(name: str, limits: tuple[str, ...], models: tuple[str, ...]) -> None:
    """Register a tenant (the help text, from NAME_RULE, says which names are allowed)."""
    created = _registry().create(name, parse_limits(_pairs(limits)), models)
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
    deployed = _registry().deploy(name, data)
    click.echo(f"deployed {file.name} to {deployed.name} (sha256 {deployed.module_sha256}, "
               f"{deployed.module_size} bytes)")


@tenant.command("list")
@json_option
def list_tenants(as_json: bool) -> None:
    """List tenants."""
    tenants = _registry().list()
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
    registry = _registry()
    t, adapters = registry.get(name), registry.adapters(name)
    if as_json:
        click.echo(json.dumps({**t.as_json(), "adapters": {a: dataclasses.asdict(b) for a, b in adapters.items()}}))
        return
    table = _detail(t)
    for alias, binding in adapters.items():
        table.add_row(f"adapter {alias}", f"{binding.path} (scale {binding.scale:g})")
    console.print(table)


@tenant.command("set-limits")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True, metavar="LIMIT=VALUE...")
def set_limits(name: str, pairs: tuple[str, ...]) -> None:
    """Change some of tenant NAME's limits, e.g. `realm tenant set-limits acme wall_seconds=60`."""
    overrides = _pairs(pairs, "LIMIT=VALUE")
    changed = _registry().set_limits(name, overrides)
    shown = ", ".join(f"{key}={getattr(changed.limits, key)}" for key in overrides)
    click.echo(f"tenant {changed.name}: {shown}")


@tenant.command("set-models")
@click.argument("name")
@click.argument("models", nargs=-1, metavar="MODEL...")
@click.option("--all", "every", is_flag=True, help="Allow every model the server serves.")
def set_models(name: str, models: tuple[str, ...], every: bool) -> None:
    """Set the models tenant NAME may use by id, e.g. `realm tenant set-models acme gemma-3-270m qwen3`."""
    if every == bool(models):
        raise click.UsageError("give the model ids the tenant may use, or --all (not both)")
    changed = _registry().set_models(name, models)
    click.echo(f"tenant {changed.name}: models {', '.join(changed.models) or 'all'}")


@tenant.command()
@click.argument("name")
def delete(name: str) -> None:
    """Delete tenant NAME (its keys, limits, models, adapters and usage), and its module unless another
    tenant serves the same one."""
    _registry().delete(name)
    click.echo(f"deleted tenant {name}")


@tenant.command("set-lora")
@click.argument("name")
@click.argument("file", metavar="FILE")
@click.option("--scale", type=float, default=1.0, show_default=True, help="The adapter's default scale.")
@click.option("--as", "alias", default="default", show_default=True, metavar="ALIAS",
              help="The name the tenant's guest finds it by (the reference guest: the request's \"lora\").")
def set_lora(name: str, file: str, scale: float, alias: str) -> None:
    """Bind a LoRA adapter FILE (llama.cpp GGUF adapter, or a PEFT folder) to tenant NAME as ALIAS."""
    binding = _registry().set_lora(name, file, scale, alias)
    click.echo(f"tenant {name}: adapter {alias} = {binding.path} at scale {binding.scale:g}")


@tenant.command("unset-lora")
@click.argument("name")
@click.argument("alias", required=False)
def unset_lora(name: str, alias: str | None) -> None:
    """Unbind tenant NAME's adapter ALIAS (every adapter if ALIAS is not given)."""
    removed = _registry().unset_lora(name, alias)
    click.echo(f"tenant {name}: unbound {', '.join(removed) if removed else 'nothing'}")


@tenant.command("rate-limit")
@click.argument("name")
@click.option("--requests-per-minute", type=click.IntRange(0), help="Requests a minute; 0 is unlimited.")
@click.option("--tokens-per-minute", type=click.IntRange(0),
              help="Prompt + completion tokens a minute; 0 is unlimited.")
@click.option("--default", "use_default", is_flag=True, help="Go back to the server's defaults.")
@json_option
def rate_limit(name: str, requests_per_minute: int | None, tokens_per_minute: int | None, use_default: bool,
               as_json: bool) -> None:
    """Show or set tenant NAME's HTTP rate limits (unset ones follow `realm serve`'s defaults)."""
    registry = _registry()
    registry.get(name)
    limits = registry.rate_limits(name)
    if use_default or requests_per_minute is not None or tokens_per_minute is not None:
        limits = RateLimits() if use_default else RateLimits(
            requests_per_minute if requests_per_minute is not None else limits.requests_per_minute,
            tokens_per_minute if tokens_per_minute is not None else limits.tokens_per_minute)
        registry.set_rate_limits(name, limits)
    if as_json:
        click.echo(json.dumps(limits.as_json()))
        return
    show = {k: "server default" if v is None else ("unlimited" if v == 0 else str(v))
            for k, v in limits.as_json().items()}
    click.echo(f"{name}: {show['requests_per_minute']} requests/min, {show['tokens_per_minute']} tokens/min")


@tenant.command()
@click.argument("name")
@click.option("--since", metavar="AGE|DATE", help="Only requests since then: an age (30m, 12h, 7d) or an ISO date "
              "or date-time (UTC unless it says). [default: all]")
@json_option
def usage(name: str, since: str | None, as_json: bool) -> None:
    """Show tenant NAME's usage: requests and tokens, in all and per model."""
    report = _registry().usage(name, parse_since(since) if since is not None else None)
    if as_json:
        click.echo(json.dumps(report))
        return
    table = Table("model", "requests", "succeeded", "prompt tokens", "completion tokens", "cached tokens",
                  title=f"usage of {name}" + (f" since {_when(report['since'])}" if since is not None else ""))
    for model, row in [*report["models"].items(), ("all", report["total"])]:
        table.add_row(model, *(str(v) for v in row.values()))
    console.print(table)


@tenant.group()
def key() -> None:
    """Manage a tenant's API keys (for `realm serve`)."""


@key.command("create")
@click.argument("name")
@json_option
def key_create(name: str, as_json: bool) -> None:
    """Make a new API key for tenant NAME and print it: it is shown only this once."""
    record, secret = _registry().create_key(name)
    if as_json:
        click.echo(json.dumps({**record.as_json(), "key": secret}))
        return
    click.echo(secret)
    click.echo(f"key {record.key_id} for tenant {name}: store it now, it cannot be shown again", err=True)


@key.command("list")
@click.argument("name")
@json_option
def key_list(name: str, as_json: bool) -> None:
    """List tenant NAME's keys (ids and dates; the keys themselves are not stored)."""
    keys = _registry().list_keys(name)
    if as_json:
        click.echo(json.dumps([k.as_json() for k in keys]))
        return
    table = Table("key id", "created", "revoked", title=f"keys of {name}")
    for k in keys:
        table.add_row(k.key_id, _when(k.created_at), _when(k.revoked_at))
    console.print(table)


@key.command("revoke")
@click.argument("name")
@click.argument("key_id")
def key_revoke(name: str, key_id: str) -> None:
    """Revoke tenant NAME's key KEY_ID: running servers refuse it within 5 s (at once with SQLite)."""
    revoked: ApiKey = _registry().revoke_key(name, key_id)
    click.echo(f"revoked key {revoked.key_id} of tenant {name}")


def _detail(t: Tenant) -> Table:
    table = Table(show_header=False, title=f"tenant {t.name}")
    table.add_row("created", _when(t.created_at))
    table.add_row("module sha256", t.module_sha256 or "- (not deployed)")
    table.add_row("module bytes", str(t.module_size or "-"))
    table.add_row("deployed", _when(t.deployed_at))
    table.add_row("models", ", ".join(t.models) or "all")
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
