"""What one request of a tenant may use: the Limits record and its validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import GuestError

MAX_I32 = 2**31 - 1

# Fixed bounds on what one host call may be asked to do, checked before the host reads or converts
# anything (the per-request budgets are in Limits).
MAX_TOKENIZE_BYTES = 256 << 10  # one tokenize call (~60k tokens); merging holds ~150 bytes per character
MAX_DETOKENIZE_IDS = 1 << 18  # one detokenize call: at most a few MiB of text even for long tokens
MAX_JSON_BYTES = 1 << 20  # sampler_new's JSON (the reference guest passes its whole request)
MAX_JSON_DIGITS = 32  # digits of one JSON number: longer ones are not a sampling parameter
MAX_STOP_STRINGS = 64  # stop strings in one sampler
MAX_STOP_BYTES = 1024  # bytes of one stop string
LOG_LINE_BYTES = 64  # what one log line costs beyond its text, so empty lines are not free


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
    max_host_bytes: int = 64 << 20  # what the request keeps on the host: sequences, logits, samplers, logs

    def validate(self) -> Limits:
        """Raise GuestError if a limit is not a positive number in range; return self."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise GuestError(f"limit {f.name} must be a positive number, got {value!r}")
        # Guest pointers are i32: a memory over 2 GiB would make valid addresses look negative.
        if self.memory_bytes > 2**31 or max(self.max_tokens, self.max_context, self.max_output_bytes,
                                            self.max_sequences, self.max_host_bytes) > MAX_I32:
            raise GuestError("limits must fit in a signed 32-bit integer (memory_bytes at most 2 GiB)")
        return self
