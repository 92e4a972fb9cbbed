"""What a guest run reports: its RunResult, and when it fails, an error that says why and carries it.

A failed run raises a subclass of GuestRunFailed for its cause, which is also the engine's error for
that cause, so a caller catches either: GuestRunError (a GuestError: a trap, a broken ABI, a failing
status), GuestRunOverLimit (QuotaExceeded), GuestRunCancelled (RequestCancelled),
GuestRunBackendError (BackendError), GuestRunOverloaded (Overloaded: a shared resource stayed taken
until the deadline) and GuestRunAdapterError (AdapterError: a bound adapter that is unusable). Each
holds the partial RunResult as `.result`: the text emitted before the failure, the guest's logs and
its trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import wasmtime

from host_functions.abi import CallStats, Limits, Session, Status, StepStats, TokenLogprob
from host_functions.errors import (
    AdapterError,
    BackendError,
    GuestError,
    Overloaded,
    QuotaExceeded,
    RealmError,
    RequestCancelled,
)
from realm.sandbox.engine import MAX_TABLE_ELEMENTS

LOG_ERROR = 3  # the `log` level of an error line (realm.h: 0 debug .. 3 error)
MAX_REASON_CHARS = 300  # of a guest's own error line quoted in the request's error


@dataclass
class RunResult:
    """What one request produced: the emitted text, the guest's status and how it got there."""

    text: str
    status: int
    trace: dict[str, CallStats]
    logs: list[tuple[int, str]]
    fuel_used: int
    seconds: float
    tokens_fed: int
    steps: StepStats = field(default_factory=StepStats)  # target steps, speculation's drafts and acceptances
    finish_reason: str | None = None  # as the guest reported it (result_report): "stop", "length", "context"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # reported by the guest (token_logprobs)

    @classmethod
    def of(cls, session: Session, status: int, fuel_used: int, seconds: float) -> RunResult:
        """The result of a finished (or ended) request from its session."""
        report = session.report
        return cls(session.text(), status, session.trace, session.logs, fuel_used, seconds, session.tokens_fed,
                   session.steps, report.finish_reason if report else None,
                   report.prompt_tokens if report else None, report.completion_tokens if report else None,
                   session.logprobs)


class GuestRunFailed(RealmError):
    """A guest run that failed; `result` is what it produced until then. Raised as the subclass for
    its cause (see `of`); this class itself only for a cause outside those."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result

    @staticmethod
    def of(cause: RealmError, result: RunResult) -> GuestRunFailed:
        """The failure of a run that `cause` ended, with its partial result."""
        kind = next((k for k, base in _KINDS if isinstance(cause, base)), GuestRunFailed)
        return kind(str(cause), result)


class GuestRunError(GuestRunFailed, GuestError):
    """The guest trapped, broke the ABI or returned a failing status."""


class GuestRunOverLimit(GuestRunFailed, QuotaExceeded):
    """A limit of the request (fuel, wall clock, memory, tokens, ...) ended it."""


class GuestRunCancelled(GuestRunFailed, RequestCancelled):
    """The request was cancelled (Ctrl-C, a client that left)."""


class GuestRunBackendError(GuestRunFailed, BackendError):
    """The compute backend failed during the request."""


class GuestRunOverloaded(GuestRunFailed, Overloaded):
    """A shared resource stayed taken by other work (the tenant over its share) until the deadline."""


class GuestRunAdapterError(GuestRunFailed, AdapterError):
    """An adapter bound to the tenant is not usable (a bad file, more than the tenant may hold)."""


# Most specific first: QuotaExceeded is a GuestError.
_KINDS: tuple[tuple[type[GuestRunFailed], type[RealmError]], ...] = (
    (GuestRunCancelled, RequestCancelled), (GuestRunOverLimit, QuotaExceeded),
    (GuestRunBackendError, BackendError), (GuestRunOverloaded, Overloaded), (GuestRunAdapterError, AdapterError),
    (GuestRunError, GuestError))
# What a host call may raise that ends the request (not a status the guest gets back): every cause above
# but GuestError's, which a host function's refusal also is.
REQUEST_ENDING: tuple[type[RealmError], ...] = tuple(cause for _, cause in _KINDS if cause is not GuestError)


def explain_wasmtime(exc: Exception, limits: Limits, at_memory_cap: bool) -> RealmError:
    """What a trap or wasmtime error that ended a request means: a limit it hit, or the guest's fault.
    `at_memory_cap`: the guest's memory is at its limit (said beside a trap, which it may explain)."""
    if isinstance(exc, wasmtime.Trap):
        code = exc.trap_code
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return QuotaExceeded(f"guest used up its CPU budget of {limits.fuel} fuel")
        if code == wasmtime.TrapCode.INTERRUPT:
            return QuotaExceeded(f"request exceeded its wall-clock limit of {limits.wall_seconds:g} s")
        message = f"guest trapped: {_last_line(exc)}"
        if at_memory_cap:
            message += f" (its memory is at the {limits.memory_bytes} byte limit)"
        return GuestError(message)
    text = _last_line(exc)
    if isinstance(exc, wasmtime.WasmtimeError) and "limit" in text.lower():
        if "memory" in text:
            return QuotaExceeded(f"guest needs more than its memory limit of {limits.memory_bytes} bytes")
        if "table" in text:
            return QuotaExceeded(f"guest needs more than the limit of {MAX_TABLE_ELEMENTS} table elements")
    return GuestError(f"guest failed: {text}")


def failing_status(status: int, session: Session) -> GuestError:
    """Why a guest returned a failing status, in its own words first (the last error it logged, as
    realm_fail does), then the status and the last host error it got, if any."""
    reason = next((text for level, text in reversed(session.logs) if level == LOG_ERROR and text.strip()), "")
    host = f"last host error: {session.last_error}" if session.last_error else ""
    if reason:
        name = Status(status).name if status in Status._value2member_map_ else str(status)
        return GuestError(f"{_printable_line(reason)} (guest status {name}" + (f"; {host})" if host else ")"))
    return GuestError(f"guest returned status {Status.describe(status)}" + (f" ({host})" if host else ""))


def speculation_figures(result: RunResult, decode_seconds: float | None = None) -> dict[str, float | int] | None:
    """What speculation did in a run: drafts made and accepted, acceptance_rate, and completion tokens per
    decode step of the target (plain decoding gives about 1); decode_tok_s when the decode time is
    known. None if nothing was verified."""
    steps = result.steps
    if not steps.verified_steps:
        return None
    produced = result.completion_tokens or 0
    figures: dict[str, float | int] = {
        "drafted": steps.drafted, "accepted": steps.accepted,
        "acceptance_rate": round(steps.accepted / steps.drafted, 4) if steps.drafted else 0.0,
        "target_steps": steps.target_steps,
        # the prompt's step makes the first token; every later target step is a decode step
        "tokens_per_target_step": round(produced / max(1, steps.target_steps - 1), 3),
    }
    if decode_seconds:
        figures["decode_tok_s"] = round(max(produced - 1, 0) / decode_seconds, 2)
    return figures


def _last_line(exc: Exception) -> str:
    """wasmtime puts the cause last, after the backtrace ("wasm trap: call stack exhausted")."""
    lines = str(exc).strip().splitlines()
    return lines[-1].strip().removeprefix("wasm trap: ") if lines else type(exc).__name__


def _printable_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Guest text made fit for one line of an operator's terminal: no control characters, bounded."""
    line = "".join(ch if ch.isprintable() else " " for ch in text[: limit + 1]).strip()
    return line if len(line) <= limit else line[:limit] + "..."
