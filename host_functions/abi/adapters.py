"""Host functions for LoRA: find one of the tenant's own adapters by alias, attach it to a sequence.

The adapters a request can see are its tenant's bindings (alias -> file and default scale), copied
when the request starts: rebinding a tenant's adapter never changes a request already running, and
no name a guest can pass reaches another tenant's adapter. An adapter is loaded into the model's
adapter pool on first use and held until the request ends. Its errors name it by the alias the
tenant bound it as, never by its file on the host, and end the request: an adapter file that is
not a usable adapter (AdapterError, a 400 for a server), or one that stayed over the tenant's share of
the adapter pool (or merged copies) until the request's deadline (Overloaded, a 503): until then
the request waits for its share (fair_share.waiting, docs/isolation.md).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from host_functions.abi.checks import decode_utf8
from host_functions.abi.handles import SeqState
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import host
from host_functions.abi.session import Session
from host_functions.abi.status import AbiError, Status
from host_functions.errors import AdapterError, Overloaded
from host_functions.fair_share import Charges, Claim, waiting
from host_functions.lora.adapter import LoraAdapter

MAX_ALIAS_BYTES = 256
ADAPTER_STATE_BYTES = 1 << 10
MAX_SCALE = 1000.0  # |scale| beyond this is a mistake, not a setting
T = TypeVar("T")


@dataclass(eq=False)
class AdapterState:
    """An adapter this request found: the loaded adapter, its alias and its binding's default scale."""

    adapter: LoraAdapter
    alias: str
    scale: float
    merged: bool = False

    def host_bytes(self) -> int:
        return ADAPTER_STATE_BYTES  # the adapter itself is in the model's pool (its own memory budget)


@host("alias_ptr", "alias_len", grows=True)
def adapter_find(s: Session, mem: GuestMemory, alias_ptr: int, alias_len: int) -> int:
    """The handle of the tenant's adapter bound as `alias`, loading it on first use."""
    if not 0 <= alias_len <= MAX_ALIAS_BYTES:
        raise AbiError(Status.INVALID_ARGUMENT, f"an adapter alias is at most {MAX_ALIAS_BYTES} bytes")
    alias = decode_utf8(mem.read(alias_ptr, alias_len))
    binding = s.adapter_bindings.get(alias)
    if binding is None:
        raise AbiError(Status.INVALID_ARGUMENT, f"no LoRA adapter is bound as {alias!r} for this tenant")
    claim = Claim(s.tenant, s.limits.share_weight, s.limits.adapter_bytes)
    pool = s.model.adapters
    adapter = _for_alias(s, alias, lambda: pool.acquire(binding.path, claim), pool.charges, claim)
    s.held_adapters.append(adapter)
    return s.handles.add(AdapterState(adapter, alias, binding.scale, binding.merged))


@host("seq", "adapter", "scale_bits")
def seq_set_adapter(s: Session, mem: GuestMemory, seq: int, adapter: int, scale_bits: int) -> int:
    """Apply `adapter` (0: none) to the sequence's next steps at the float32 scale whose bits are
    scale_bits (0.0: the binding's scale)."""
    state = s.handles.get(seq, SeqState)
    if state.seq.layers_done:
        raise AbiError(Status.WRONG_STATE, "cannot change the adapter while a step is in progress")
    if adapter == 0:
        state.seq.set_adapter(None, 0.0)
        return Status.OK
    found = s.handles.get(adapter, AdapterState)
    scale = struct.unpack("<f", struct.pack("<i", scale_bits))[0]
    if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
        raise AbiError(Status.INVALID_ARGUMENT,
                       f"an adapter scale must be finite and within +-{MAX_SCALE:g}, got {scale}")
    claim = Claim(s.tenant, s.limits.share_weight)
    cache = s.model.backend.merged_lora if found.merged else None

    def attempt() -> None:
        state.seq.set_adapter(found.adapter, scale or found.scale, merged=found.merged, claim=claim)

    _for_alias(s, found.alias, attempt, None if cache is None else cache.charges, claim)
    return Status.OK


def _for_alias(s: Session, alias: str, attempt: Callable[[], T], charges: Charges | None, claim: Claim) -> T:
    """attempt(), waiting for the tenant's share of `charges` while it raises Overloaded, until the
    request's deadline; its AdapterError or last Overloaded (this request's, nobody else's) naming
    the adapter by its alias."""
    try:
        if charges is None:
            return attempt()
        return waiting(attempt, charges.shares, claim, s.should_give_up)
    except AdapterError as exc:
        raise exc.naming(repr(alias)) from None
    except Overloaded as exc:
        raise Overloaded(f"LoRA adapter {alias!r}: {exc}; waited until the request's deadline") from None
