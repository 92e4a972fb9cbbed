"""A request's fields, checked before any guest runs, the same way for `realm run`, `realm chat`,
`realm batch`, the HTTP server and the benches.

The guest's own check stays the guest's: the reference guest hands its whole request to sampler_new,
whose parser (host_functions.abi.logits) refuses what the host sampler cannot use. The runtime refuses
the same values first, from the same rules (SamplingParams.from_fields, the ABI's limits on stop
strings and on the digits of a number), so a bad field is the caller's error (a usage error, an HTTP
400, a failed batch line) rather than a guest run that fails after the model has loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

from host_functions.abi import MAX_I32
from host_functions.abi.limits import MAX_JSON_DIGITS
from host_functions.abi.logits import check_stop_strings
from host_functions.constraint import KINDS, compile_grammar
from host_functions.engine.sampling import SamplingParams
from host_functions.errors import RealmError

SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))
SPECULATIVE_FORMS = "ngram, draft:FILE or self:N"


class RequestFieldError(RealmError):
    """A request field refused before any guest runs; `field` names it where the check knows which
    (the sampler's own messages name it in their text)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class MalformedField(RequestFieldError):
    """A field that is not of the form it must have; `reason` says how without naming the field
    (`realm run` reports it as a usage error of the field's flag)."""

    field: str

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", field)
        self.reason = reason


def check_sampling(fields: Mapping[str, Any], ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
    """Refuse the sampling fields of a guest request (temperature, top_k, ..., stop, seed, max_tokens,
    logit_bias) that the host sampler would refuse; other fields are the guest's and pass.

    `ranges` are narrower bounds a front end puts on numbers (the server's are the OpenAI API's); a
    "logit_bias" entry bounds the bias values. Raises RequestFieldError for the first bad field,
    MalformedField for a max_tokens beyond what the ABI carries (an i32).
    """
    for name, (low, high) in (ranges or {}).items():
        _check_range(name, fields.get(name), low, high)
    try:
        check_stop_strings(fields.get("stop"))
    except RealmError as exc:
        raise RequestFieldError(str(exc), "stop") from None
    max_tokens = fields.get("max_tokens")
    if _is_int(max_tokens) and max_tokens > MAX_I32:
        raise MalformedField("max_tokens", f"{max_tokens} is out of range (at most {MAX_I32})")
    for name in sorted(SAMPLING_FIELDS & fields.keys()):
        if _is_int(fields[name]) and _too_long(fields[name]):
            raise RequestFieldError(f"{name} must be a number of at most {MAX_JSON_DIGITS} digits", name)
    try:
        SamplingParams.from_fields(fields)
    except RealmError as exc:
        raise RequestFieldError(str(exc)) from None
    check_constraint(fields.get("constraint"))


def check_constraint(value: object) -> None:
    """Refuse a "constraint" field ({"kind": json_schema|json_object|regex|lark, "text": str}) whose grammar
    the host would refuse: compiled here (bounded by llguidance's limits) and dropped. Raises
    RequestFieldError naming the cause."""
    if value is None:
        return
    if not (isinstance(value, dict) and value.get("kind") in KINDS and isinstance(value.get("text"), str)):
        raise RequestFieldError(f"constraint must be {{\"kind\": {' | '.join(KINDS)}, \"text\": string}}",
                                "constraint")
    try:
        compile_grammar(KINDS[value["kind"]], value["text"])
    except RealmError as exc:
        raise RequestFieldError(str(exc), "constraint") from None


def speculative_drafts(value: object) -> tuple[str, ...]:
    """The draft model files a request's "speculative" lets its guest open: the FILE of draft:FILE,
    else none (ngram, self:N, or no speculation). MalformedField for another form or a missing file."""
    if value is None:
        return ()
    kind, _, arg = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not (value == "ngram" or (kind == "self" and arg.isascii() and arg.isdigit())
            or (kind == "draft" and arg and "\0" not in arg)):
        raise MalformedField("speculative", f"expected {SPECULATIVE_FORMS}, got {value!r}")
    if kind == "draft" and not Path(arg).expanduser().is_file():
        raise MalformedField("speculative", f"no such draft model file: {arg}")
    return (arg,) if kind == "draft" else ()


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if name == "logit_bias":
        if value is not None and (not isinstance(value, dict) or not all(
                _is_number(v) and low <= v <= high for v in value.values())):
            raise RequestFieldError(f"logit_bias must map token ids to numbers in [{low:g}, {high:g}]", name)
    elif value is not None and (not _is_number(value) or not low <= value <= high):
        raise RequestFieldError(f"{name} must be a number in [{low:g}, {high:g}]", name)


def _too_long(value: int) -> bool:
    """Whether JSON writes the integer in more than MAX_JSON_DIGITS characters, which the ABI's parser
    refuses (a minus sign counts)."""
    return abs(value) >= 10 ** (MAX_JSON_DIGITS - (value < 0))


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
