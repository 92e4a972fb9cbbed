"""Host functions that carry results out: the streaming detokenizer, emit, the request log, the result report."""

from __future__ import annotations

from host_functions.abi.checks import check_token
from host_functions.abi.handles import SeqState
from host_functions.abi.limits import LOG_LINE_BYTES
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import host
from host_functions.abi.session import Report, Session
from host_functions.abi.status import TEXT_FLUSH, AbiError, FinishReason, Status
from host_functions.errors import QuotaExceeded


@host("seq", "token", "out_ptr", "out_cap", grows=True)
def text_push(s: Session, mem: GuestMemory, seq: int, token: int, out_ptr: int, out_cap: int) -> int:
    """Push a token (or TEXT_FLUSH) through the sequence's streaming decoder; write up to out_cap bytes
    of the completed text. Text that does not fit waits for the next call; returns the bytes written."""
    state = s.handles.get(seq, SeqState)
    mem.span(out_ptr, out_cap)
    if token != TEXT_FLUSH:
        check_token(s, token)
    if state.decoder is None:
        state.decoder = s.tokenizer.stream_decoder()
    piece = state.decoder.flush() if token == TEXT_FLUSH else state.decoder.push(token)
    state.text += piece.encode()
    n = mem.write(out_ptr, bytes(state.text[:out_cap]))
    del state.text[:n]
    return n


@host("ptr", "len")
def emit(s: Session, mem: GuestMemory, ptr: int, n: int) -> int:
    """Stream UTF-8 bytes to the client."""
    mem.span(ptr, n)
    if s.output_bytes + n > s.limits.max_output_bytes:
        raise QuotaExceeded(f"guest emitted more than its limit of {s.limits.max_output_bytes} bytes")
    s.emit_bytes(mem.read(ptr, n))
    return Status.OK


@host("level", "ptr", "len", grows=True)
def log(s: Session, mem: GuestMemory, level: int, ptr: int, n: int) -> int:
    """Record a log line (level 0 debug .. 3 error) for the request; LIMIT once the log is full."""
    if not 0 <= level <= 3:
        raise AbiError(Status.INVALID_ARGUMENT, f"log level must be 0..3, got {level}")
    mem.span(ptr, n)
    cost = LOG_LINE_BYTES + n  # an empty line still costs a list entry
    if s.log_bytes + cost > s.limits.max_log_bytes:
        raise AbiError(Status.LIMIT, f"log limit of {s.limits.max_log_bytes} bytes reached "
                                     f"(a line costs {LOG_LINE_BYTES} bytes besides its text)")
    data = mem.read(ptr, n)
    s.log_bytes += cost
    s.logs.append((level, data.decode("utf-8", "replace")))
    return Status.OK


@host("finish_reason", "prompt_tokens", "completion_tokens")
def result_report(s: Session, mem: GuestMemory, finish_reason: int, prompt_tokens: int, completion_tokens: int) -> int:
    """Tell the host why generation ended (a FinishReason) and the token counts; the last report wins."""
    try:
        reason = FinishReason(finish_reason)
    except ValueError:
        raise AbiError(Status.INVALID_ARGUMENT, f"unknown finish reason {finish_reason}") from None
    if prompt_tokens < 0 or completion_tokens < 0:
        raise AbiError(Status.INVALID_ARGUMENT, "token counts must not be negative")
    s.report = Report(reason.label, prompt_tokens, completion_tokens)
    return Status.OK
