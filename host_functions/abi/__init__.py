"""The guest ABI: what a guest may call (module `realm`) and the host-side state behind it.

A guest imports these functions from the module `realm` (see docs/abi.md and guest/realm.h, which
mirror this package). Every parameter and result is an i32. A host function returns a non-negative
value on success and a negative `Status` on failure; it never raises into the guest, except to end
the request when the guest exceeds a limit (QuotaExceeded) or the host itself fails (GuestError):
those unwind through the sandbox, which reports them for that request alone.

One concept per module, each importing only modules named before it: `status` (codes, flags, export names) and
`limits`; `memory` (checked guest memory: every (pointer, length) goes through `GuestMemory.span`),
`handles` (a request's objects: a forged, closed or foreign handle is not in the table and yields
BAD_HANDLE), `registry` (the @host table) and `adapter_binding` (what a tenant's adapter alias
stands for); `session` (one request's host-side state); `checks` (shared argument checks); and the
host functions by subject: `tokens`, `sequences`, `logits`, `output`, `speculation`, `adapters`,
`constraints`.
"""

from host_functions.abi import adapters, constraints, logits, output, sequences, speculation, tokens  # noqa: F401  importing registers the host functions
from host_functions.abi.adapter_binding import AdapterBinding
from host_functions.abi.handles import HandleTable, SamplerState, SeqState
from host_functions.abi.limits import MAX_I32, Limits
from host_functions.abi.logits import MAX_SAMPLERS, MAX_TOP_LOGPROBS, sampling_params_from_json
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import HOST_FUNCTIONS, HostFunction, host
from host_functions.abi.session import CallStats, Report, Session, StepStats, TokenLogprob
from host_functions.abi.status import (
                     ABI_VERSION,
                     ALLOC_EXPORT,
                     ENTRY_EXPORT,
                     IMPORT_MODULE,
                     MEMORY_EXPORT,
                     TEXT_FLUSH,
                     AbiError,
                     BiasMode,
                     FinishReason,
                     Status,
                     TokenizeFlags,
)
from host_functions.abi.tokens import info_fields

__all__ = ["ABI_VERSION", "ALLOC_EXPORT", "ENTRY_EXPORT", "HOST_FUNCTIONS", "IMPORT_MODULE", "MAX_I32", "MAX_SAMPLERS",
           "MAX_TOP_LOGPROBS", "MEMORY_EXPORT", "TEXT_FLUSH", "AbiError", "AdapterBinding", "BiasMode", "CallStats",
           "FinishReason", "GuestMemory", "HandleTable", "HostFunction", "Limits", "Report", "SamplerState", "SeqState",
           "Session", "Status", "StepStats", "TokenLogprob", "TokenizeFlags", "host", "info_fields",
           "sampling_params_from_json"]
