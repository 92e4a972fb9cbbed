"""What one request of a tenant may use: the Limits record and its validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from host_functions.errors import GuestError
from host_functions.fair_share import MAX_WEIGHT

MAX_I32 = 2**31 - 1
MAX_I64 = 2**63 - 1
MAX_WALL_SECONDS = 7 * 24 * 3600.0  # a week: beyond that a "limit" is no limit

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
    # The tenant's shares of what all tenants share (docs/isolation.md), over all its requests at once:
    share_weight: int = 1  # its weight in every fair share (worker places, KV blocks, adapter bytes, steps)
    max_runs: int = MAX_I32  # guest runs on a server, running or queued (n choices are n runs)
    kv_blocks: int = MAX_I32  # KV cache blocks (16 positions each)
    adapter_bytes: int = MAX_I64  # bytes of LoRA adapters held in the adapter pool

    def validate(self) -> Limits:
        """Return self; raise GuestError naming the first limit that is not a finite number in its range
        (LIMIT_RANGES) or not an integer where the limit counts something."""
        for name, (kind, low, high) in LIMIT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GuestError(f"limit {name} must be a number, got {value!r}")
            if kind is int and not isinstance(value, int):
                raise GuestError(f"limit {name} must be an integer, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise GuestError(f"limit {name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise GuestError(f"limit {name} must be in [{low:g}, {high:g}], got {_short(value)}"
                                 + (" (guest pointers are i32: at most 2 GiB)" if name == "memory_bytes" else ""))
        return self


def _short(value: int | float) -> str:
    # repr of a huge int is slow, and past 4300 digits an error
    return "a number of more than 24 digits" if isinstance(value, int) and abs(value) >= 10**24 else repr(value)


def _count(high: int) -> tuple[type, int, int]:
    return int, 1, high


# name -> (type, smallest, largest). Guest pointers are i32, so memory over 2 GiB would make valid
# addresses look negative; counts a guest reads from model_info are i32; fuel is wasmtime's u64.
LIMIT_RANGES: dict[str, tuple[type, float, float]] = {
    "memory_bytes": _count(2**31),
    "fuel": _count(MAX_I64),
    "wall_seconds": (float, 0.001, MAX_WALL_SECONDS),
    "max_host_calls": _count(MAX_I64),
    "max_tokens": _count(MAX_I32),
    "max_sequences": _count(MAX_I32),
    "max_context": _count(MAX_I32),
    "max_output_bytes": _count(MAX_I32),
    "max_log_bytes": _count(MAX_I32),
    "max_text_bytes": _count(MAX_I32),
    "max_host_bytes": _count(MAX_I64),
    "share_weight": _count(MAX_WEIGHT),
    "max_runs": _count(MAX_I32),
    "kv_blocks": _count(MAX_I32),
    "adapter_bytes": _count(MAX_I64),
}
assert set(LIMIT_RANGES) == {f.name for f in dataclasses.fields(Limits)}, "every limit has a range"
