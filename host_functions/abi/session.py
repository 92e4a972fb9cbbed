"""The host side of one guest request: its model, limits, handles, output, log and accounting."""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from host_functions.abi.adapter_binding import AdapterBinding
from host_functions.abi.handles import HandleTable, SeqState
from host_functions.abi.limits import Limits
from host_functions.engine.model import Model
from host_functions.engine.scheduler import StepOwner
from host_functions.errors import QuotaExceeded, RealmError
from host_functions.lora.adapter import LoraAdapter


@dataclass
class CallStats:
    """How often the guest called one host function and the seconds spent in it."""

    calls: int = 0
    seconds: float = 0.0


@dataclass
class StepStats:
    """Steps of the request's target model and what speculation drafted and got accepted."""

    target_steps: int = 0  # seq_finish / seq_finish_all on the request's own model
    verified_steps: int = 0  # spec_verify calls
    drafted: int = 0
    accepted: int = 0
    cached_tokens: int = 0  # prompt positions the target's sequences took from the prefix cache


@dataclass(frozen=True)
class Report:
    """A guest's account of its result: why generation ended and the tokens on each side."""

    finish_reason: str  # "stop", "length" or "context"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and its most likely alternatives, as the guest reported it."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token, logprob), most likely first


class Session:
    """The host side of one guest request: model, limits, handles, output, log, trace and failure."""

    def __init__(self, model: Model, limits: Limits, on_text: Callable[[str], None] | None = None,
                 tenant: str = "", open_draft: Callable[[str], Model | None] | None = None,
                 adapters: Mapping[str, AdapterBinding] | None = None,
                 on_logprob: Callable[[TokenLogprob], None] | None = None) -> None:
        self.model, self.limits, self.tenant = model, limits, tenant
        self.config, self.tokenizer = model.config, model.tokenizer
        self.n_ctx = min(model.config.context_length, limits.max_context)
        self.handles = HandleTable()
        self.open_draft = open_draft or (lambda name: None)  # draft models this request may open
        self.adapter_bindings: Mapping[str, AdapterBinding] = dict(adapters or {})  # a snapshot: rebinding
        self.held_adapters: list[LoraAdapter] = []  # never changes a running request
        self.on_text = on_text
        self.output: list[str] = []
        self.logs: list[tuple[int, str]] = []
        self.trace: dict[str, CallStats] = {}
        self.memory: Any = None  # the instance's exported memory, once instantiated
        self.deadline = time.monotonic() + limits.wall_seconds
        self.failure: RealmError | None = None  # what ended the request from inside a host call
        self.last_error = ""  # the last AbiError message, to explain a failing status
        self.tokens_fed = 0
        self.steps = StepStats()
        self.report: Report | None = None  # what the guest said of its result (result_report)
        self.logprobs: list[TokenLogprob] = []  # what the guest reported with token_logprobs
        self.on_logprob = on_logprob  # each of them as it is reported (a stream attaches them to its chunks)
        self.logprob_bytes = 0  # their size on the host, counted in host_bytes
        self.host_calls = 0
        self.output_bytes = 0
        self.log_bytes = 0
        self.text_bytes = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.cancelled = threading.Event()  # set from another thread (a server) to end the request

    def should_stop(self) -> bool:
        """True once the request is cancelled: a step it waits for is withdrawn."""
        return self.cancelled.is_set()

    def should_give_up(self) -> bool:
        """True once the request is cancelled or past its deadline: a wait for a share ends."""
        return self.should_stop() or time.monotonic() >= self.deadline

    def step_owner(self) -> StepOwner:
        """Who this request's steps are for: the scheduler's tenant, deadline and cancellation."""
        return StepOwner(self.tenant, self.deadline, self.should_stop, self.limits.share_weight,
                         self.limits.kv_blocks)

    def enter(self) -> None:
        """Account for one host call: QuotaExceeded past the wall clock or the host-call budget."""
        self.host_calls += 1
        if self.host_calls > self.limits.max_host_calls:
            raise QuotaExceeded(f"guest made more than its limit of {self.limits.max_host_calls} host calls")
        self.check_deadline()

    def count_step(self, state: SeqState) -> None:
        """A step completed on one of the request's sequences (a draft sequence's steps are not the
        target's, even when the draft is the target's own file)."""
        if not state.records_samples:
            self.steps.target_steps += 1

    def charge_text(self, n_bytes: int) -> None:
        """Account for text the host tokenizes or detokenizes; QuotaExceeded past max_text_bytes."""
        self.text_bytes += n_bytes
        if self.text_bytes > self.limits.max_text_bytes:
            raise QuotaExceeded(f"guest tokenized or detokenized more than its limit of "
                                f"{self.limits.max_text_bytes} bytes of text")

    def check_deadline(self) -> None:
        """QuotaExceeded once the request is past its wall clock (also the tokenizer's interrupt)."""
        if time.monotonic() > self.deadline:
            raise QuotaExceeded(f"request exceeded its wall-clock limit of {self.limits.wall_seconds:g} s")

    def host_bytes(self) -> int:
        """What this request keeps on the host: its sequences (tokens, kept logits, undelivered text),
        samplers and log (LOG_LINE_BYTES a line besides the text). KV caches are bounded apart, by
        max_sequences x max_context."""
        return self.handles.host_bytes() + self.log_bytes + self.logprob_bytes

    def check_host_memory(self) -> None:
        """QuotaExceeded once what the request keeps on the host is over max_host_bytes."""
        used = self.host_bytes()
        if used > self.limits.max_host_bytes:
            raise QuotaExceeded(f"guest keeps {used} bytes of host state (sequences, logits, samplers, log), "
                                f"over its limit of {self.limits.max_host_bytes}")

    def text(self) -> str:
        return "".join(self.output)

    def finish_output(self) -> None:
        """Flush a trailing incomplete UTF-8 sequence the guest emitted (as U+FFFD)."""
        self._deliver(self._utf8.decode(b"", final=True))

    def close_all(self) -> None:
        """Free every sequence the guest left open."""
        for state in self.handles.objects(SeqState):
            state.seq.close()
        for adapter in self.held_adapters:
            self.model.adapters.release(adapter, self.tenant)
        self.held_adapters.clear()

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
