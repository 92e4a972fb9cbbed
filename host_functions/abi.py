"""The guest ABI: status codes, limits, checked guest memory, per-request handles and every host function.

A guest imports these functions from the module `realm` (see docs/abi.md and guest/realm.h, which
mirror this file). Every parameter and result is an i32. A host function returns a non-negative value
on success and a negative `Status` on failure; it never raises into the guest, except to end the
request when the guest exceeds a limit (QuotaExceeded) or the host itself fails (GuestError): those
unwind through the sandbox, which reports them for that request alone.

Everything a guest can name lives in its request's `HandleTable`: a forged, closed or foreign
handle is simply not in the table and yields BAD_HANDLE. Every (pointer, length) pair goes through
`GuestMemory.span`, the one place where guest addresses are checked.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

import numpy as np

from realm.errors import Cancelled, GuestError, QuotaExceeded, RealmError

from .model import Model, Sequence
from .sampling import Sampler, SamplingParams

ABI_VERSION = 1
IMPORT_MODULE = "realm"
ENTRY_EXPORT = "realm_main"  # (request_ptr: i32, request_len: i32) -> i32 status
ALLOC_EXPORT = "realm_alloc"  # (size: i32) -> i32 pointer, 0 on failure
MEMORY_EXPORT = "memory"

MAX_SAMPLERS = 64  # live samplers per request; a sampler is small, so this only stops runaway loops
MAX_TOP_LOGPROBS = 20  # alternatives per reported token (OpenAI's top_logprobs maximum)
_MAX_I32 = 2**31 - 1


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


TEXT_FLUSH = -1  # `text_push` token value: flush the sequence's decoder (end of its text)

_BIAS_PAIR = np.dtype([("token", "<i4"), ("bias", "<f4")])
_INFO_FIELDS = ("abi_version", "n_vocab", "n_layers", "n_ctx", "n_embd", "bos_id", "eos_id",
                "max_sequences", "max_tokens", "max_output_bytes")


@dataclass(frozen=True)
class Limits:
    """What one request of a tenant may use. Exceeding any of them ends the request with QuotaExceeded."""

    memory_bytes: int = 64 << 20  # guest linear memory
    fuel: int = 2_000_000_000  # guest instructions (wasmtime fuel): the CPU deadline
    wall_seconds: float = 300.0  # the whole request, host calls included (4096 CPU tokens fit)
    max_host_calls: int = 1_000_000  # calls into the host: a guest spinning on cheap calls burns host CPU
    max_tokens: int = 16384  # tokens fed to the model, over all sequences (prompt included)
    max_sequences: int = 16  # live sequences (KV caches) at once
    max_context: int = 4096  # capacity of one sequence
    max_output_bytes: int = 256 << 10  # bytes emitted to the client (about 60000 tokens of text)
    max_log_bytes: int = 64 << 10  # log bytes kept; beyond that `log` returns LIMIT
    max_text_bytes: int = 4 << 20  # text tokenized or detokenized: host work a guest can't be preempted in

    def validate(self) -> Limits:
        """Raise GuestError if a limit is not a positive number in range; return self."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise GuestError(f"limit {f.name} must be a positive number, got {value!r}")
        # Guest pointers are i32: a memory over 2 GiB would make valid addresses look negative.
        if self.memory_bytes > 2**31 or max(self.max_tokens, self.max_context, self.max_output_bytes,
                                            self.max_sequences) > _MAX_I32:
            raise GuestError("limits must fit in a signed 32-bit integer (memory_bytes at most 2 GiB)")
        return self


class AbiError(Exception):
    """A host function's failure that the guest sees as a negative status."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


class GuestMemory:
    """Checked access to the guest's linear memory for the duration of one host call.

    The memory's address and size are read lazily, once per call: `memory.grow` may move it
    between calls, never during one.
    """

    __slots__ = ("_memory", "_store", "_base", "_size")

    def __init__(self, memory: Any, store: Any) -> None:
        self._memory, self._store = memory, store
        self._base = -1
        self._size = 0

    def span(self, ptr: int, count: int, itemsize: int = 1) -> int:
        """Host address of guest bytes [ptr, ptr + count * itemsize); BAD_POINTER unless all inside memory.

        ptr and count arrive as signed i32, so negative values are rejected here, and the end is
        computed with Python integers, so no sum can wrap around.
        """
        if self._base < 0:
            if self._memory is None:
                raise AbiError(Status.WRONG_STATE, "guest memory is not available yet (called from a start function)")
            self._base = ctypes.addressof(self._memory.data_ptr(self._store).contents)
            self._size = self._memory.data_len(self._store)
        if ptr < 0 or count < 0 or ptr + count * itemsize > self._size:
            raise AbiError(Status.BAD_POINTER,
                           f"({ptr}, {count}) x {itemsize} bytes is outside guest memory of {self._size} bytes")
        return self._base + ptr

    def read(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(self.span(ptr, n), n) if n else b""

    def read_array(self, ptr: int, count: int, dtype: np.dtype | str) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.read(ptr, count * dt.itemsize) if count else b"", dt, count)

    def write(self, ptr: int, data: bytes | np.ndarray, cap: int | None = None) -> int:
        """Copy data (at most `cap` bytes of it) to ptr; returns the bytes written."""
        buf = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
        n = len(buf) if cap is None else min(len(buf), cap)
        if n:
            ctypes.memmove(self.span(ptr, n), buf, n)
        return n


T = TypeVar("T")
_MISSING = object()


class HandleTable:
    """The host objects one request may name. Handles are random positive i32 and never reused,
    so a closed handle or a number seen in another request is (almost surely) not in the table,
    and even when it is, it names this request's own object."""

    def __init__(self) -> None:
        self._objects: dict[int, object] = {}
        self._issued: set[int] = set()
        self._rng = random.Random()  # seeded from os.urandom

    def add(self, obj: object) -> int:
        while (handle := self._rng.randint(1, _MAX_I32)) in self._issued:
            pass
        self._issued.add(handle)
        self._objects[handle] = obj
        return handle

    def get(self, handle: int, kind: type[T]) -> T:
        obj = self._objects.get(handle, _MISSING)
        if obj is _MISSING or not isinstance(obj, kind):
            raise AbiError(Status.BAD_HANDLE, f"{handle} is not a live {kind.__name__} handle of this request")
        return obj

    def remove(self, handle: int, kind: type[T]) -> T:
        obj = self.get(handle, kind)
        del self._objects[handle]
        return obj

    def count(self, kind: type) -> int:
        return sum(isinstance(o, kind) for o in self._objects.values())

    def objects(self, kind: type[T]) -> list[T]:
        return [o for o in self._objects.values() if isinstance(o, kind)]


@dataclass(eq=False)
class SeqState:
    """A guest's sequence: the engine's Sequence plus the logits of its last step and its text decoder."""

    seq: Sequence
    logits: np.ndarray | None = None  # (n_vocab,) float32 after seq_finish, until the next append
    decoder: Any = None  # the tokenizer's StreamDecoder, created on the first text_push
    text: bytearray = field(default_factory=bytearray)  # decoded, not yet copied to the guest

    def require_logits(self) -> np.ndarray:
        if self.logits is None:
            raise AbiError(Status.WRONG_STATE, "no logits: call seq_finish after the last layer first")
        return self.logits


@dataclass(eq=False)
class SamplerState:
    sampler: Sampler


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and its most likely alternatives, as the guest reported it."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token, logprob), most likely first


@dataclass
class CallStats:
    """How often the guest called one host function and the seconds spent in it."""

    calls: int = 0
    seconds: float = 0.0


class Session:
    """The host side of one guest request: model, limits, handles, output, log, trace and failure."""

    def __init__(self, model: Model, limits: Limits, on_text: Callable[[str], None] | None = None,
                 tenant: str = "", cancelled: Callable[[], bool] | None = None) -> None:
        self.model, self.limits, self.tenant = model, limits, tenant
        self.config, self.tokenizer = model.config, model.tokenizer
        self.n_ctx = min(model.config.context_length, limits.max_context)
        self.handles = HandleTable()
        self.on_text = on_text
        self.output: list[str] = []
        self.logs: list[tuple[int, str]] = []
        self.trace: dict[str, CallStats] = {}
        self.memory: Any = None  # the instance's exported memory, once instantiated
        self.deadline = time.monotonic() + limits.wall_seconds
        self.failure: RealmError | None = None  # what ended the request from inside a host call
        self.last_error = ""  # the last AbiError message, to explain a failing status
        self.tokens_fed = 0
        self.host_calls = 0
        self.output_bytes = 0
        self.log_bytes = 0
        self.text_bytes = 0
        self.logprobs: list[TokenLogprob] = []  # what the guest reported with token_logprobs
        self.cancelled = cancelled  # the client went away: end the request at its next host call
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def enter(self) -> None:
        """Account for one host call: QuotaExceeded past the wall clock or the host-call budget,
        Cancelled once the request's client has gone."""
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("the client cancelled the request")
        self.host_calls += 1
        if self.host_calls > self.limits.max_host_calls:
            raise QuotaExceeded(f"guest made more than its limit of {self.limits.max_host_calls} host calls")
        self.check_deadline()

    def charge_text(self, n_bytes: int) -> None:
        """Account for text the host tokenizes or detokenizes; QuotaExceeded past max_text_bytes."""
        self.text_bytes += n_bytes
        if self.text_bytes > self.limits.max_text_bytes:
            raise QuotaExceeded(f"guest tokenized or detokenized more than its limit of "
                                f"{self.limits.max_text_bytes} bytes of text")

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise QuotaExceeded(f"request exceeded its wall-clock limit of {self.limits.wall_seconds:g} s")

    def text(self) -> str:
        return "".join(self.output)

    def finish_output(self) -> None:
        """Flush a trailing incomplete UTF-8 sequence the guest emitted (as U+FFFD)."""
        self._deliver(self._utf8.decode(b"", final=True))

    def close_all(self) -> None:
        """Free every sequence the guest left open."""
        for state in self.handles.objects(SeqState):
            state.seq.close()

    def emit_bytes(self, data: bytes) -> None:
        self.output_bytes += len(data)
        if self.output_bytes > self.limits.max_output_bytes:
            raise QuotaExceeded(f"guest emitted more than its limit of {self.limits.max_output_bytes} bytes")
        self._deliver(self._utf8.decode(data))

    def _deliver(self, text: str) -> None:
        if text:
            self.output.append(text)
            if self.on_text is not None:
                self.on_text(text)


@dataclass(frozen=True)
class HostFunction:
    """One import of module `realm`: its i32 parameter names and the implementation."""

    name: str
    params: tuple[str, ...]
    impl: Callable[..., int]
    doc: str


HOST_FUNCTIONS: dict[str, HostFunction] = {}


def host(*params: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register `impl(session, memory, *params) -> int` as the import named after the function."""

    def register(impl: Callable[..., int]) -> Callable[..., int]:
        HOST_FUNCTIONS[impl.__name__] = HostFunction(impl.__name__, params, impl, (impl.__doc__ or "").strip())
        return impl

    return register


# --- model and tokenizer -------------------------------------------------------------------------

@host("out_ptr", "out_len")
def model_info(s: Session, mem: GuestMemory, out_ptr: int, out_len: int) -> int:
    """Write the realm_model_info struct (as much of it as fits); returns its full size in bytes."""
    c, tok = s.config, s.tokenizer
    values = (ABI_VERSION, c.n_vocab, c.n_layers, s.n_ctx, c.n_embd, _id_or_none(tok.bos_id),
              _id_or_none(tok.eos_id), s.limits.max_sequences, s.limits.max_tokens, s.limits.max_output_bytes)
    data = np.asarray(values, "<i4").tobytes()
    mem.span(out_ptr, out_len)
    mem.write(out_ptr, data, cap=out_len)
    return len(data)


@host("text_ptr", "text_len", "flags", "out_ptr", "out_cap")
def tokenize(s: Session, mem: GuestMemory, text_ptr: int, text_len: int, flags: int, out_ptr: int,
             out_cap: int) -> int:
    """Token ids of UTF-8 text; writes the first out_cap of them and returns how many there are."""
    if flags & ~(TokenizeFlags.ADD_SPECIAL | TokenizeFlags.PARSE_SPECIAL):
        raise AbiError(Status.INVALID_ARGUMENT, f"unknown tokenize flags {flags:#x}")
    mem.span(out_ptr, out_cap, 4)
    s.charge_text(max(text_len, 0))
    text = _utf8(mem.read(text_ptr, text_len))
    ids = s.tokenizer.encode(text, add_bos=None if flags & TokenizeFlags.ADD_SPECIAL else False,
                             parse_special=bool(flags & TokenizeFlags.PARSE_SPECIAL))
    mem.write(out_ptr, np.asarray(ids[:out_cap], "<i4"))
    return len(ids)


@host("ids_ptr", "n_ids", "out_ptr", "out_cap")
def detokenize(s: Session, mem: GuestMemory, ids_ptr: int, n_ids: int, out_ptr: int, out_cap: int) -> int:
    """UTF-8 text of token ids; writes the first out_cap bytes and returns the full length."""
    mem.span(out_ptr, out_cap)
    ids = _tokens(s, mem.read_array(ids_ptr, n_ids, "<i4"))
    s.charge_text(4 * len(ids))  # a token decodes to a few bytes: bound the work before doing it
    return _write_counted(mem, out_ptr, out_cap, s.tokenizer.decode(ids).encode())


@host("token", "out_ptr", "out_cap")
def token_piece(s: Session, mem: GuestMemory, token: int, out_ptr: int, out_cap: int) -> int:
    """The raw bytes of one token (possibly part of a UTF-8 character); returns their full length."""
    mem.span(out_ptr, out_cap)
    return _write_counted(mem, out_ptr, out_cap, s.tokenizer.token_bytes(_token(s, token)))


@host("token")
def token_is_eog(s: Session, mem: GuestMemory, token: int) -> int:
    """1 if the token ends generation (EOS, end of turn...), else 0."""
    return int(bool(s.tokenizer.is_end_of_generation(_token(s, token))))


# --- sequences -----------------------------------------------------------------------------------

@host("capacity")
def seq_open(s: Session, mem: GuestMemory, capacity: int) -> int:
    """Open a sequence (a KV cache) of `capacity` tokens, 0 for n_ctx; returns its handle."""
    if capacity < 0 or capacity > s.n_ctx:
        raise AbiError(Status.CAPACITY, f"sequence capacity must be 0..{s.n_ctx}, got {capacity}")
    if s.handles.count(SeqState) >= s.limits.max_sequences:
        raise QuotaExceeded(f"guest exceeded its limit of {s.limits.max_sequences} live sequences")
    return s.handles.add(SeqState(s.model.open_sequence(capacity or s.n_ctx)))


@host("seq")
def seq_close(s: Session, mem: GuestMemory, seq: int) -> int:
    """Free a sequence; its handle is dead from now on."""
    s.handles.remove(seq, SeqState).seq.close()
    return Status.OK


@host("seq", "ids_ptr", "n_ids")
def seq_append(s: Session, mem: GuestMemory, seq: int, ids_ptr: int, n_ids: int) -> int:
    """Queue tokens for the sequence's next step (prompt, sampled or forced tokens)."""
    state = s.handles.get(seq, SeqState)
    ids = _tokens(s, mem.read_array(ids_ptr, n_ids, "<i4"))
    sq = state.seq
    if sq.layers_done:
        raise AbiError(Status.WRONG_STATE, "cannot append while a step is in progress")
    if len(sq.tokens) + len(sq.pending) + len(ids) > sq.capacity:
        raise AbiError(Status.CAPACITY, f"sequence capacity of {sq.capacity} tokens exceeded")
    s.tokens_fed += len(ids)
    if s.tokens_fed > s.limits.max_tokens:
        raise QuotaExceeded(f"guest fed more than its limit of {s.limits.max_tokens} tokens to the model")
    sq.append(ids)
    state.logits = None
    return Status.OK


@host("seq", "layer")
def forward_layer(s: Session, mem: GuestMemory, seq: int, layer: int) -> int:
    """Run one transformer layer over the pending tokens; activations stay on the host."""
    sq = s.handles.get(seq, SeqState).seq
    if not sq.pending:
        raise AbiError(Status.WRONG_STATE, "no pending tokens: seq_append first")
    if layer != sq.layers_done:
        raise AbiError(Status.WRONG_STATE, f"expected layer {sq.layers_done}, got {layer}")
    sq.forward_layer(layer)
    return Status.OK


@host("seq")
def seq_finish(s: Session, mem: GuestMemory, seq: int) -> int:
    """Complete the step after the last layer: commit the pending tokens, keep their last logits host-side."""
    state = s.handles.get(seq, SeqState)
    sq = state.seq
    if not sq.pending or sq.layers_done != s.config.n_layers:
        raise AbiError(Status.WRONG_STATE, f"step incomplete: {sq.layers_done} of {s.config.n_layers} layers run")
    state.logits = sq.finish()
    return Status.OK


@host("seq")
def seq_len(s: Session, mem: GuestMemory, seq: int) -> int:
    """Number of tokens in the sequence's KV cache."""
    return len(s.handles.get(seq, SeqState).seq.tokens)


@host("seq", "n")
def seq_truncate(s: Session, mem: GuestMemory, seq: int, n: int) -> int:
    """Keep the first n cached tokens (backtracking); drops a step in progress and the logits."""
    state = s.handles.get(seq, SeqState)
    if not 0 <= n <= len(state.seq.tokens):
        raise AbiError(Status.INVALID_ARGUMENT, f"cannot truncate {len(state.seq.tokens)} tokens to {n}")
    state.seq.truncate(n)
    state.logits = None
    return Status.OK


# --- logits and sampling -------------------------------------------------------------------------

@host("seq", "out_ptr", "n")
def logits_read(s: Session, mem: GuestMemory, seq: int, out_ptr: int, n: int) -> int:
    """Copy the first n f32 logits of the last step into guest memory; returns n_vocab."""
    logits = s.handles.get(seq, SeqState).require_logits()
    mem.span(out_ptr, n, 4)
    mem.write(out_ptr, logits[:n].astype("<f4", copy=False))
    return len(logits)


@host("seq", "k", "ids_ptr", "values_ptr")
def logits_topk(s: Session, mem: GuestMemory, seq: int, k: int, ids_ptr: int, values_ptr: int) -> int:
    """The k largest logits, highest first: ids (i32) and values (f32); returns how many were written."""
    logits = s.handles.get(seq, SeqState).require_logits()
    if k <= 0:
        raise AbiError(Status.INVALID_ARGUMENT, f"k must be positive, got {k}")
    k = min(k, len(logits))
    mem.span(ids_ptr, k, 4)
    mem.span(values_ptr, k, 4)
    top = np.argpartition(-logits, k - 1)[:k]
    top = top[np.argsort(-logits[top], kind="stable")]
    mem.write(ids_ptr, top.astype("<i4"))
    mem.write(values_ptr, logits[top].astype("<f4"))
    return k


@host("json_ptr", "json_len")
def sampler_new(s: Session, mem: GuestMemory, json_ptr: int, json_len: int) -> int:
    """A sampler from a JSON object of sampling parameters (unknown keys ignored); returns its handle."""
    params = sampling_params_from_json(mem.read(json_ptr, json_len))
    if s.handles.count(SamplerState) >= MAX_SAMPLERS:
        raise QuotaExceeded(f"guest exceeded the limit of {MAX_SAMPLERS} live samplers")
    return s.handles.add(SamplerState(Sampler(params)))


@host("sampler")
def sampler_free(s: Session, mem: GuestMemory, sampler: int) -> int:
    """Free a sampler."""
    s.handles.remove(sampler, SamplerState)
    return Status.OK


@host("seq", "sampler", "bias_ptr", "bias_len", "mode")
def sample(s: Session, mem: GuestMemory, seq: int, sampler: int, bias_ptr: int, bias_len: int, mode: int) -> int:
    """Sample the next token from the last step's logits, biased or masked by the guest; returns the token.

    The sampler's penalties look at the sequence's cached tokens. The token is not appended: the
    guest decides what to feed next.
    """
    state = s.handles.get(seq, SeqState)
    smp = s.handles.get(sampler, SamplerState)
    logits = state.require_logits()
    if bias_len or mode == BiasMode.ALLOW:
        logits = _biased(logits, mem, bias_ptr, bias_len, mode)
    return int(smp.sampler.sample(logits, state.seq.tokens))


@host("seq", "token", "top_k")
def token_logprobs(s: Session, mem: GuestMemory, seq: int, token: int, top_k: int) -> int:
    """Report `token`'s log-probability under the last step's logits (before any sampler change),
    with the top_k (0..20) most likely tokens, to the client (OpenAI `logprobs`)."""
    logits = s.handles.get(seq, SeqState).require_logits()
    _token(s, token)
    if not 0 <= top_k <= MAX_TOP_LOGPROBS:
        raise AbiError(Status.INVALID_ARGUMENT, f"top_k must be 0..{MAX_TOP_LOGPROBS}, got {top_k}")
    if len(s.logprobs) >= s.limits.max_tokens:
        raise AbiError(Status.LIMIT, f"more than {s.limits.max_tokens} tokens' logprobs reported")
    shifted = logits.astype(np.float64) - float(np.max(logits))
    logp = shifted - np.log(np.exp(shifted).sum())
    top = np.argpartition(-logp, top_k)[:top_k] if top_k else np.zeros(0, np.int64)
    top = top[np.argsort(-logp[top], kind="stable")]
    s.logprobs.append(TokenLogprob(token, float(logp[token]), tuple((int(i), float(logp[i])) for i in top)))
    return Status.OK


# --- text out ------------------------------------------------------------------------------------

@host("seq", "token", "out_ptr", "out_cap")
def text_push(s: Session, mem: GuestMemory, seq: int, token: int, out_ptr: int, out_cap: int) -> int:
    """Push a token (or TEXT_FLUSH) through the sequence's streaming decoder; write up to out_cap bytes
    of the completed text. Text that does not fit waits for the next call; returns the bytes written."""
    state = s.handles.get(seq, SeqState)
    mem.span(out_ptr, out_cap)
    if token != TEXT_FLUSH:
        _token(s, token)
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


@host("level", "ptr", "len")
def log(s: Session, mem: GuestMemory, level: int, ptr: int, n: int) -> int:
    """Record a log line (level 0 debug .. 3 error) for the request; LIMIT once the log is full."""
    if not 0 <= level <= 3:
        raise AbiError(Status.INVALID_ARGUMENT, f"log level must be 0..3, got {level}")
    mem.span(ptr, n)
    if s.log_bytes + n > s.limits.max_log_bytes:
        raise AbiError(Status.LIMIT, f"log limit of {s.limits.max_log_bytes} bytes reached")
    data = mem.read(ptr, n)
    s.log_bytes += n
    s.logs.append((level, data.decode("utf-8", "replace")))
    return Status.OK


# --- helpers -------------------------------------------------------------------------------------

def sampling_params_from_json(data: bytes) -> SamplingParams:
    """SamplingParams from the known keys of a JSON object; INVALID_ARGUMENT on bad JSON or values."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AbiError(Status.INVALID_ARGUMENT, f"sampling parameters are not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise AbiError(Status.INVALID_ARGUMENT, "sampling parameters must be a JSON object")
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    kwargs = {k: v for k, v in obj.items() if k in names}
    if isinstance(kwargs.get("stop"), list):
        kwargs["stop"] = tuple(kwargs["stop"])
    if "logit_bias" in kwargs:
        kwargs["logit_bias"] = _logit_bias(kwargs["logit_bias"])
    try:
        params = SamplingParams(**kwargs)
        params.validate()
    except (RealmError, TypeError, ValueError) as exc:
        raise AbiError(Status.INVALID_ARGUMENT, f"bad sampling parameters: {exc}") from None
    return params


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias` ({"token id": bias}) as (token, bias) pairs; INVALID_ARGUMENT if malformed."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise AbiError(Status.INVALID_ARGUMENT, "logit_bias must be an object of token id -> bias")
    try:
        return tuple((int(k), v) for k, v in value.items())
    except ValueError:
        raise AbiError(Status.INVALID_ARGUMENT, "logit_bias keys must be token ids and values numbers") from None


def _biased(logits: np.ndarray, mem: GuestMemory, ptr: int, n: int, mode: int) -> np.ndarray:
    n_vocab = len(logits)
    if mode not in (BiasMode.ADD, BiasMode.ALLOW, BiasMode.DENSE):
        raise AbiError(Status.INVALID_ARGUMENT, f"unknown bias mode {mode}")
    dense = mode == BiasMode.DENSE
    mem.span(ptr, n, 4 if dense else _BIAS_PAIR.itemsize)
    if dense:
        if n != n_vocab:
            raise AbiError(Status.INVALID_ARGUMENT, f"a dense bias needs n_vocab = {n_vocab} values, got {n}")
        out = logits + mem.read_array(ptr, n, "<f4")
    else:
        pairs = mem.read_array(ptr, n, _BIAS_PAIR)
        ids = pairs["token"].astype(np.int64)
        if n == 0 or ids.min() < 0 or ids.max() >= n_vocab:
            raise AbiError(Status.INVALID_ARGUMENT, f"bias needs 1.. token ids in 0..{n_vocab - 1}")
        # ALLOW starts from all -inf, so only the listed tokens can be drawn (repeated ids: the last wins).
        out = logits.copy() if mode == BiasMode.ADD else np.full_like(logits, -np.inf)
        out[ids] = logits[ids] + pairs["bias"]
    if np.isnan(out).any() or not np.isfinite(out).any() or np.isposinf(out).any():
        raise AbiError(Status.INVALID_ARGUMENT, "bias leaves no finite logit to sample from (or adds NaN/+inf)")
    return out.astype(np.float32, copy=False)


def _token(s: Session, token: int) -> int:
    if not 0 <= token < s.config.n_vocab:
        raise AbiError(Status.INVALID_ARGUMENT, f"token id {token} out of range 0..{s.config.n_vocab - 1}")
    return token


def _tokens(s: Session, ids: np.ndarray) -> list[int]:
    if len(ids) and (ids.min() < 0 or ids.max() >= s.config.n_vocab):
        raise AbiError(Status.INVALID_ARGUMENT, f"token ids must be in 0..{s.config.n_vocab - 1}")
    return ids.tolist()


def _write_counted(mem: GuestMemory, ptr: int, cap: int, data: bytes) -> int:
    if len(data) > _MAX_I32:
        raise AbiError(Status.INVALID_ARGUMENT, "result too large")
    mem.write(ptr, data, cap=cap)
    return len(data)


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AbiError(Status.INVALID_ARGUMENT, f"text is not UTF-8: {exc}") from None


def _id_or_none(token: int | None) -> int:
    return -1 if token is None or token < 0 else int(token)


def info_fields() -> tuple[str, ...]:
    """The i32 fields of realm_model_info, in order (the struct in guest/realm.h)."""
    return _INFO_FIELDS
