"""Where RunRequests come from: one constructor per front end.

    from_flags       `realm run`: the fields of its flags, and --tenant or --guest, --speculative, --lora
    from_batch_line  a line of `realm batch`: a JSON object of fields, "tenant", "lora", "lora_scale", "lora_mode"
    for_tenant       a tenant's request as the HTTP server and `realm chat` run it
    for_bench        a bench's run of the reference guest

Every constructor that takes fields from a user checks them with realm.request.fields first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from host_functions.abi import AdapterBinding, Limits
from host_functions.errors import AdapterError, GuestError, RealmError, TenantError
from host_functions.formats import json_text
from realm.request.fields import check_sampling, speculative_drafts
from realm.request.spec import RunRequest
from realm.sandbox.intake import GuestModule, compile_guest, reference_guest
from realm.tenants import Tenant, TenantRegistry

CLI_ADAPTER = "default"  # the alias of `realm run --lora FILE`, which the reference guest is then asked to apply
LORA_MODES = ("unmerged", "merged")


def from_flags(fields: Mapping[str, Any], tenant: str | None = None, guest_file: Path | None = None,
               speculative: str | None = None, lora_file: str | None = None, lora_scale: float = 1.0,
               lora_merged: bool = False) -> RunRequest:
    """`realm run`'s request: `fields` from its flags (the prompt, the sampling flags, --stop, --param,
    --special), --speculative, --lora FILE at --lora-scale as the adapter "default" (merged with
    --lora-mode merged), and the guest: tenant `tenant`'s deployed one under its limits, `guest_file`,
    or the reference guest under default limits.

    Raises RequestFieldError for a field the sampler refuses (MalformedField for max_tokens beyond an
    i32 or a malformed --speculative), AdapterError for a missing adapter or a scale that is not
    finite, TenantError for an unknown tenant, one without a deployed guest or with limits that do
    not validate, and for an unreadable guest file, and GuestError for a file that is not a guest.
    """
    check_sampling(fields)
    fields = dict(fields)
    drafts = _speculation(fields, speculative)
    adapters = TenantRegistry().adapters(tenant) if tenant else {}
    if lora_file is not None:
        adapters[CLI_ADAPTER] = file_adapter(lora_file, lora_scale, lora_merged)
        fields["lora"] = CLI_ADAPTER
    if tenant:
        guest, limits = _deployed(tenant)
    else:
        guest, limits = (_read_guest(guest_file) if guest_file else reference_guest()), Limits()
    return RunRequest(fields, guest, limits, tenant or "", adapters, drafts)


def from_batch_line(text: str) -> RunRequest:
    """One line of `realm batch`: a JSON object of the guest's fields with a string "prompt" ("stop" may
    be one string), and optionally "tenant" (its deployed guest and limits; else the reference guest),
    "speculative", and "lora": one of the tenant's aliases, or an adapter file applied at "lora_scale"
    in "lora_mode" ("unmerged" or "merged").

    Raises RealmError saying what is wrong with the line (a RequestFieldError for a bad field, a
    TenantError for an unknown tenant, an AdapterError for a missing adapter).
    """
    try:
        fields = json_text.loads(text)
    except ValueError as exc:  # a JSONDecodeError, an integer too long to convert, nested too deeply
        raise RealmError(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise RealmError("a request must be a JSON object")
    tenant = fields.pop("tenant", None)
    if not isinstance(fields.get("prompt"), str):
        raise RealmError("a request needs a string \"prompt\"")
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    check_sampling(fields)
    drafts = _speculation(fields, fields.pop("speculative", None))
    if tenant is not None and not isinstance(tenant, str):
        raise RealmError("\"tenant\" must be a tenant name")
    adapters = _line_adapters(fields, tenant)
    guest, limits = _deployed(tenant) if tenant is not None else (reference_guest(), Limits())
    return RunRequest(fields, guest, limits, tenant or "", adapters, drafts)


def for_tenant(registry: TenantRegistry, tenant: Tenant, fields: Mapping[str, Any]) -> RunRequest:
    """Tenant `tenant`'s request as the server and `realm chat` run it: its deployed guest, else the
    reference guest, under its limits, with the adapters bound to it now (rebinding later never
    changes a request made before)."""
    guest = registry.guest(tenant.name) if tenant.module_sha256 else reference_guest()
    return RunRequest(fields, guest, tenant.limits, tenant.name, registry.adapters(tenant.name))


def for_bench(fields: Mapping[str, Any], adapters: Mapping[str, AdapterBinding] | None = None,
              draft_files: Sequence[str] = ()) -> RunRequest:
    """A bench's run: the reference guest under default limits, as tenant "bench"."""
    return RunRequest(fields, reference_guest(), tenant="bench", adapters=adapters or {},
                      draft_files=tuple(draft_files))


def file_adapter(path: str, scale: float, merged: bool = False) -> AdapterBinding:
    """An adapter file (or PEFT folder) given for one request; AdapterError if it is not there or the
    scale is not finite."""
    if not Path(path).expanduser().exists():
        raise AdapterError(f"no such LoRA adapter file or folder: {path}")
    if not math.isfinite(scale):
        raise AdapterError(f"the LoRA scale must be a finite number, got {scale}")
    return AdapterBinding(str(Path(path).expanduser().resolve()), scale, merged)


def _speculation(fields: dict[str, Any], speculative: str | None) -> tuple[str, ...]:
    """Put `speculative` into the fields (if given); returns the draft files the guest may open."""
    drafts = speculative_drafts(speculative)
    if speculative is not None:
        fields["speculative"] = speculative
    return drafts


def _line_adapters(fields: dict[str, Any], tenant: str | None) -> dict[str, AdapterBinding]:
    """A line's "lora": one of its tenant's aliases, or an adapter file applied at "lora_scale" in
    "lora_mode"; either of those without a "lora" is an error, not ignored."""
    if "lora" not in fields and ("lora_scale" in fields or "lora_mode" in fields):
        raise RealmError("\"lora_scale\" and \"lora_mode\" need a \"lora\" adapter")
    scale = fields.pop("lora_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise RealmError("\"lora_scale\" must be a number")
    mode = fields.pop("lora_mode", LORA_MODES[0])
    if mode not in LORA_MODES:
        raise RealmError("\"lora_mode\" must be \"unmerged\" or \"merged\"")
    lora = fields.pop("lora", None)
    bindings = TenantRegistry().adapters(tenant) if tenant else {}
    if lora is None:
        return bindings
    if not isinstance(lora, str) or not lora:
        raise RealmError("\"lora\" must be an adapter file or one of the tenant's adapter aliases")
    if lora not in bindings:
        bindings[CLI_ADAPTER] = file_adapter(lora, float(scale), merged=mode == "merged")
        lora = CLI_ADAPTER
    fields["lora"] = lora
    return bindings


def _deployed(tenant: str) -> tuple[GuestModule, Limits]:
    """Tenant `tenant`'s deployed guest and its limits; TenantError if it has none, or limits a registry
    written before they were validated may hold (inf, nan)."""
    registry = TenantRegistry()
    limits = registry.get(tenant).limits
    try:
        limits.validate()
    except GuestError as exc:
        raise TenantError(f"tenant {tenant!r}: {exc} (fix it: realm tenant set-limits {tenant} NAME=VALUE)") from None
    return registry.guest(tenant), limits


def _read_guest(path: Path) -> GuestModule:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TenantError(f"cannot read {path}: {exc}") from None
    return compile_guest(data)
