"""Host functions for LoRA: find one of the tenant's own adapters by alias, attach it to a sequence.

The adapters a request can see are its tenant's bindings (alias -> file and default scale), copied
when the request starts: rebinding a tenant's adapter never changes a request already running, and
no name a guest can pass reaches another tenant's adapter. An adapter is loaded into the model's
adapter pool on first use and held until the request ends. Its errors name it by the alias the
tenant bound it as, never by its file on the host.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from host_functions.abi.checks import decode_utf8
from host_functions.abi.handles import SeqState
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import host
from host_functions.abi.session import Session
from host_functions.abi.status import AbiError, Status
from host_functions.errors import AdapterError
from host_functions.fair_share import Claim
from host_functions.lora.adapter import LoraAdapter

MAX_ALIAS_BYTES = 256
ADAPTER_STATE_BYTES = 1 << 10
MAX_SCALE = 1000.0  # |scale| beyond this is a mistake, not a setting


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
    try:
        claim = Claim(s.tenant, s.limits.share_weight, s.limits.adapter_bytes)
        adapter = s.model.adapters.acquire(binding.path, claim)
    except AdapterError as exc:
        raise AbiError(Status.INVALID_ARGUMENT, str(exc.naming(repr(alias)))) from None
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
    try:
        state.seq.set_adapter(found.adapter, scale or found.scale, merged=found.merged,
                              claim=Claim(s.tenant, s.limits.share_weight))
    except AdapterError as exc:  # merged weights beyond their budget: this request's error, nobody else's
        raise AbiError(Status.INVALID_ARGUMENT, str(exc.naming(repr(found.alias)))) from None
    return Status.OK
