"""Status codes, flags and export names of the guest ABI (mirrored in guest/realm.h)."""

from __future__ import annotations

from enum import IntEnum

from host_functions.errors import CapacityError, RealmError, StepOrderError, TokenRangeError

# 2: result_report; 3: speculative decoding; 4: LoRA, token_logprobs; 5: seq_step, seq_fork; 6: constraints
ABI_VERSION = 6
IMPORT_MODULE = "realm"
ENTRY_EXPORT = "realm_main"  # (request_ptr: i32, request_len: i32) -> i32 status
ALLOC_EXPORT = "realm_alloc"  # (size: i32) -> i32 pointer, 0 on failure
MEMORY_EXPORT = "memory"


class Status(IntEnum):
    """Results of host functions (negative) and of `realm_main`; mirrored in guest/realm.h."""

    OK = 0
    INVALID_ARGUMENT = -1  # a value is out of range (token id, flag, k, JSON, empty mask...)
    BAD_POINTER = -2  # a (pointer, length) pair is negative, overflows or leaves guest memory
    BAD_HANDLE = -3  # not a live handle of this request (forged, closed, another tenant's, wrong kind)
    WRONG_STATE = -4  # call out of order (layer skipped, no logits yet, append during a step)
    CAPACITY = -5  # the sequence cannot hold that many tokens
    LIMIT = -6  # a soft limit was hit (log volume); the request goes on
    INTERNAL = -7  # the host failed; reported with the request's error

    @classmethod
    def describe(cls, code: int) -> str:
        """`-3 (BAD_HANDLE)` for known codes, the bare number otherwise."""
        try:
            return f"{code} ({cls(code).name})"
        except ValueError:
            return str(code)


class BiasMode(IntEnum):
    """How `sample` reads its bias array; mirrored in guest/realm.h."""

    ADD = 0  # (token: i32, bias: f32) pairs added to those tokens' logits
    ALLOW = 1  # (token: i32, bias: f32) pairs: only these tokens may be sampled, with their bias added
    DENSE = 2  # n_vocab f32 values added to every logit (-inf masks a token)


class TokenizeFlags(IntEnum):
    ADD_SPECIAL = 1  # add BOS (etc.) as the model's tokenizer metadata asks
    PARSE_SPECIAL = 2  # turn special-token text such as "<start_of_turn>" into its token


class FinishReason(IntEnum):
    """Why a guest's generation ended, as it tells the host with `result_report`; mirrored in guest/realm.h."""

    STOP = 1  # an end-of-generation token or a stop string
    LENGTH = 2  # the request's max_tokens
    CONTEXT = 3  # the sequence's capacity (the context) was full

    @property
    def label(self) -> str:
        """The OpenAI-style name: "stop", "length" or "context"."""
        return self.name.lower()


TEXT_FLUSH = -1  # `text_push` token value: flush the sequence's decoder (end of its text)


class AbiError(Exception):
    """A host function's failure that the guest sees as a negative status."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


# The status a guest sees when the engine refuses a call (a RealmError that is not a quota or host failure).
_ERROR_STATUS: tuple[tuple[type[RealmError], Status], ...] = (
    (TokenRangeError, Status.INVALID_ARGUMENT),
    (CapacityError, Status.CAPACITY),
    (StepOrderError, Status.WRONG_STATE),
)


def status_of(exc: RealmError) -> Status:
    """The status for an engine error: its class's row in the table, INVALID_ARGUMENT otherwise."""
    for kind, status in _ERROR_STATUS:
        if isinstance(exc, kind):
            return status
    return Status.INVALID_ARGUMENT
