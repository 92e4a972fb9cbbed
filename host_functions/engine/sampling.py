"""Token sampling (llama.cpp's default chain) and stop-string matching for streamed text.

Pure and small: a `Sampler` turns one logits vector plus the token history into one token id;
a `StopMatcher` decides how much streamed text may be shown before a stop string could complete.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from host_functions.errors import RealmError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; the defaults are llama.cpp's.

    top_k = 0, top_p = 1 and min_p = 0 each switch their filter off; temperature <= 0 means greedy.
    repeat_last_n = -1 applies the penalties to the whole history, 0 switches them off.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token, bias) added to the logits first (OpenAI)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> SamplingParams:
        """Validated parameters from the known keys of a request (other keys are ignored): a list of
        stop strings and OpenAI's `logit_bias` object ({"token id": bias}) become their tuples.
        Raises RealmError naming the first unusable field. The guest ABI's sampler_new and the
        runtime's check of a request before it runs both build their parameters here."""
        given = {k: v for k, v in fields.items() if k in _FIELD_NAMES}
        if isinstance(given.get("stop"), (list, tuple)):
            given["stop"] = tuple(given["stop"])
        if "logit_bias" in given:
            given["logit_bias"] = _logit_bias_pairs(given["logit_bias"])
        params = cls(**given)
        params.validate()
        return params

    def validate(self) -> None:
        """Raise RealmError naming the first parameter whose value is unusable."""
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise RealmError(f"sampling parameter {name} must be a finite number, got {value!r}")
        for name in ("top_k", "repeat_last_n", "max_tokens"):
            if not _is_int(getattr(self, name)):
                raise RealmError(f"sampling parameter {name} must be an integer, got {getattr(self, name)!r}")
        _check(self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}")
        _check(0.0 <= self.top_p <= 1.0, f"top_p must be in [0, 1], got {self.top_p}")
        _check(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        _check(self.repeat_penalty > 0.0, f"repeat_penalty must be > 0 (1 = off), got {self.repeat_penalty}")
        _check(self.repeat_last_n >= -1, f"repeat_last_n must be >= -1, got {self.repeat_last_n}")
        _check(self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}")
        _check(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**64),
               f"seed must be null or an integer in [0, 2**64), got {self.seed!r}")
        _check(isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
               f"stop must be a list of non-empty strings, got {self.stop!r}")
        for token, bias in self.logit_bias:
            _check(_is_int(token) and token >= 0, f"logit_bias token ids must be integers >= 0, got {token!r}")
            _check(_is_number(bias) and math.isfinite(bias), f"logit_bias values must be finite numbers, got {bias!r}")


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(SamplingParams))


def _logit_bias_pairs(value: object) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias` ({"token id": bias}) as (token, bias) pairs; RealmError if malformed."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise RealmError("logit_bias must be an object of token id -> bias")
    try:
        return tuple((int(k), v) for k, v in value.items())
    except ValueError:
        raise RealmError("logit_bias keys must be token ids") from None


class Sampler:
    """Picks tokens from logits with llama.cpp's default chain.

    Order: penalties -> top-k -> top-p -> min-p -> temperature -> draw. Each sampler owns a NumPy
    Generator seeded by `params.seed`, so the same seed and inputs give the same tokens.
    """

    def __init__(self, params: SamplingParams) -> None:
        """Raises RealmError when `params` do not validate."""
        params.validate()
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    @np.errstate(all="ignore")  # extreme values overflow to +-inf on purpose; the result is checked, not warned
    def sample(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """The next token id for `logits` (n_vocab,), given the tokens generated or fed so far.

        -inf logits are never chosen. Raises RealmError when logits are not a non-empty vector or
        contain no finite maximum (all -inf, NaN or +inf).
        """
        logits, top = self._prepared(logits, history)
        if self.params.temperature <= 0.0:
            return int(np.argmax(logits))
        ids = self._filter(logits, top)
        # Shift before dividing: a tiny temperature then sends logits to -inf, never to inf - inf.
        return self.draw(ids, np.exp((logits[ids].astype(np.float64) - top) / self.params.temperature))

    def distribution(self, logits: np.ndarray, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities) that `sample` draws from: the argmax with probability 1 when greedy.

        Speculative verification compares these with a draft's. Raises RealmError as `sample` does.
        """
        logits, top = self._prepared(logits, history)
        if self.params.temperature <= 0.0:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        ids = self._filter(logits, top)
        weights = np.exp((logits[ids].astype(np.float64) - top) / self.params.temperature)
        return ids, weights / weights.sum()

    def draw(self, ids: np.ndarray, probabilities: np.ndarray) -> int:
        """One of `ids` drawn with the given (normalized or not) probabilities, from this sampler's rng."""
        cumulative = np.cumsum(probabilities)
        r = self.rng.random() * cumulative[-1]
        return int(ids[min(int(np.searchsorted(cumulative, r, side="right")), ids.size - 1)])

    def _prepared(self, logits: np.ndarray, history: Sequence[int]) -> tuple[np.ndarray, float]:
        """A penalized float32 copy of the logits and its finite maximum."""
        # A float32 copy: the penalties edit it, and float32 (llama.cpp's precision) partitions 4x faster.
        logits = np.array(logits, dtype=np.float32)
        if logits.ndim != 1 or logits.size == 0:
            raise RealmError(f"logits must be a non-empty vector, got shape {logits.shape}")
        self._apply_bias(logits)
        self._apply_penalties(logits, history)
        top = float(logits.max())
        if not math.isfinite(top):
            raise RealmError("logits have no finite maximum to sample from (all -inf, NaN or +inf)")
        return logits, top

    def _apply_bias(self, logits: np.ndarray) -> None:
        """Add logit_bias in place (llama.cpp applies it first in the chain)."""
        for token, bias in self.params.logit_bias:
            if token >= logits.size:
                raise RealmError(f"logit_bias token id {token} is out of range 0..{logits.size - 1}")
            logits[token] += bias

    def _apply_penalties(self, logits: np.ndarray, history: Sequence[int]) -> None:
        """llama.cpp's penalties over the last repeat_last_n tokens, in place."""
        p = self.params
        if p.repeat_last_n == 0 or (p.repeat_penalty == 1.0 and p.presence_penalty == 0.0
                                    and p.frequency_penalty == 0.0):
            return
        window = np.asarray(history if p.repeat_last_n < 0 else history[-p.repeat_last_n:], dtype=np.int64)
        ids, counts = np.unique(window[(window >= 0) & (window < logits.size)], return_counts=True)
        seen = logits[ids]
        # Dividing a negative logit would raise it, so llama.cpp multiplies those instead.
        seen = np.where(seen <= 0.0, seen * p.repeat_penalty, seen / p.repeat_penalty)
        logits[ids] = seen - (counts * p.frequency_penalty + p.presence_penalty)

    def _filter(self, logits: np.ndarray, top: float) -> np.ndarray:
        """Ids surviving top-k, top-p and min-p, most likely first (never empty)."""
        p = self.params
        ids = _top_k_ids(logits, p.top_k) if 0 < p.top_k < logits.size else np.arange(logits.size)
        # top-p's probabilities are normalized over everything top-k kept (at temperature 1).
        log_z = top + math.log(np.exp(logits[ids] - top).sum())
        if p.min_p > 0.0:
            # min-p keeps a most-likely-first prefix, as top-p does, so applying it before the sort
            # (to sort less) and cutting top-p's prefix inside it gives the same set as llama.cpp.
            ids = ids[logits[ids] >= top + math.log(p.min_p)]
        if p.top_p >= 1.0:
            return ids[np.argsort(-logits[ids], kind="stable")]
        for gap in _TOP_P_GAPS:  # sort only the logits within `gap` of the top, once they hold the mass
            head = ids if gap is None else ids[logits[ids] >= top - gap]
            head = head[np.argsort(-logits[head], kind="stable")]
            cumulative = np.cumsum(np.exp(logits[head] - log_z))
            if gap is None or cumulative[-1] >= p.top_p:
                return head[:int(np.searchsorted(cumulative, p.top_p, side="left")) + 1]
        raise AssertionError("unreachable: the last gap keeps every id")


# Over a large vocabulary (Gemma's 262144) the full-vector steps cost milliseconds a token: a 2 MiB
# index array per step (its page faults included) for top-k, a full sort for top-p without top-k.
# Both narrow to the logits that can survive first, which picks the same ids in the same order.
_NARROW_FROM = 16384  # vocabularies below this take the plain full-vector steps
_SUBSAMPLE = 64  # top-k's threshold comes from every 64th logit
_TOP_P_GAPS: tuple[float | None, ...] = (8.0, 16.0, 32.0, None)  # logit distances below the top; None: all


def _top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, as np.argpartition picks them.

    On a large vocabulary only the logits at or above the k-th largest of a subsample take part: a
    subset's k-th largest is at most the whole vector's, so every one of the k largest is among them.
    """
    n = logits.size
    sample = logits[::_SUBSAMPLE]
    if n < _NARROW_FROM or 4 * k > sample.size:
        return np.argpartition(logits, n - k)[n - k:]
    threshold = np.partition(sample, sample.size - k)[sample.size - k]
    candidates = np.flatnonzero(logits >= threshold)
    return candidates[np.argpartition(logits[candidates], candidates.size - k)[candidates.size - k:]]


class StopMatcher:
    """Streams text through stop strings: emits what can no longer be part of one, ends at the first hit.

    `push(piece)` returns (text safe to emit now, stopped). Text that might be the start of a stop
    string is held back until the next piece decides it; on a hit, the text before the stop string
    is emitted and the stop string itself is not. `flush(last_piece)` ends the stream and returns
    what is still held back (cut at a stop string if the last piece completes one).
    """

    def __init__(self, stop: Sequence[str]) -> None:
        """Raises RealmError for an empty stop string (it would match before any text)."""
        if any(not s for s in stop):
            raise RealmError("stop strings must be non-empty")
        self.stop = tuple(stop)
        self.stopped = False
        self._held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Add a streamed piece; return the text now safe to emit and whether a stop string was hit."""
        if self.stopped:
            return "", True
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return text[:min(hits)], True
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self, piece: str = "") -> str:
        """End of stream: push a last `piece`, then release whatever is still held back.

        Text after a stop string is never returned; after a stop this is empty.
        """
        text, stopped = self.push(piece)
        if stopped:
            return text
        text, self._held = text + self._held, ""
        return text

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RealmError(message)
