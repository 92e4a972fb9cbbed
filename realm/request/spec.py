"""RunRequest: everything one guest run needs, and the one way a request runs in the sandbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from host_functions.abi import AdapterBinding, Limits, TokenLogprob
from host_functions.engine.model import Model
from realm.models import draft_opener
from realm.sandbox.intake import GuestModule
from realm.sandbox.report import RunResult
from realm.sandbox.run import TenantSandbox


@dataclass(frozen=True)
class RunRequest:
    """One guest run: the request its guest receives, which guest runs it under which limits for which
    tenant, and what the host lets that guest open (LoRA adapters by alias, speculative draft files)."""

    # The JSON object the guest receives: prompt, sampling fields, stop, seed, logprobs, lora (an
    # alias of `adapters`), speculative, special, and any field of the guest's own.
    fields: Mapping[str, Any]
    guest: GuestModule
    limits: Limits = Limits()
    tenant: str = ""  # "": the operator's own run (the CLI, a bench)
    adapters: Mapping[str, AdapterBinding] = field(default_factory=dict)
    draft_files: tuple[str, ...] = ()  # what "speculative": "draft:FILE" may open

    def run(self, model: Model, on_text: Callable[[str], None] | None = None,
            cancel: threading.Event | None = None,
            on_logprob: Callable[[TokenLogprob], None] | None = None) -> RunResult:
        """Run the guest on `model` in the sandbox, streaming its text to `on_text` (and its tokens'
        logprobs to `on_logprob`); setting `cancel` ends the run at the guest's next host call.

        Raises GuestError for limits that do not validate, and GuestRunFailed (realm.sandbox.report:
        the subclass for its cause, carrying the partial RunResult) when the run fails.
        """
        sandbox = TenantSandbox(model, self.limits, self.tenant)
        return sandbox.run(self.guest, self.fields, on_text=on_text, cancel=cancel, on_logprob=on_logprob,
                           adapters=self.adapters,
                           open_draft=draft_opener(model, model.backend.name, self.draft_files))


class FirstText:
    """An on_text callback that passes the text on (to `sink`, if any) and notes when the first piece
    arrived (`first`, a perf_counter time): a run's time to first text."""

    def __init__(self, sink: Callable[[str], object] | None = None) -> None:
        self.sink = sink
        self.first: float | None = None

    def __call__(self, text: str) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        if self.sink is not None:
            self.sink(text)
