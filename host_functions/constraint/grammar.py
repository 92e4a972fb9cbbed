"""One constraint: a grammar compiled by llguidance, its matcher advanced token by token, its mask."""

from __future__ import annotations

import json
from enum import IntEnum
from typing import TYPE_CHECKING

import llguidance
import llguidance.numpy
import numpy as np

from host_functions.errors import RealmError

if TYPE_CHECKING:  # a TypedDict of llguidance's stubs only
    from llguidance._lib import JsonCompileOptions

MAX_GRAMMAR_BYTES = 256 << 10  # a schema, regex or grammar text; compiling is host work the guest controls
# llguidance's own bounds on one grammar, so compiling and every mask stay bounded (its defaults are larger):
# lexer fuel is about 14k units a millisecond, so a mask costs at most ~10 ms of lexing.
_LIMITS = llguidance.LLParserLimits(initial_lexer_fuel=1_000_000, step_lexer_fuel=150_000, step_max_items=50_000,
                                    max_lexer_states=100_000, max_grammar_size=500_000)


class ConstraintKind(IntEnum):
    """What a constraint's text is (the ABI's `constraint_open` kinds)."""

    JSON_SCHEMA = 0  # a JSON Schema (draft 2020-12 subset: llguidance's)
    JSON_OBJECT = 1  # any JSON object (OpenAI's json_object); the text is ignored
    REGEX = 2  # a regular expression the whole output must match
    LARK = 3  # a Lark grammar (llguidance's dialect, which also embeds JSON schemas and regexes)


KINDS = {"json_schema": ConstraintKind.JSON_SCHEMA, "json_object": ConstraintKind.JSON_OBJECT,
         "regex": ConstraintKind.REGEX, "lark": ConstraintKind.LARK}
# Byte b of a little-endian bitmask as 8 float32 additive mask values (0: allowed, -inf: not).
_BYTE_BIAS = np.where(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1,
                      np.float32(0), np.float32(-np.inf)).astype(np.float32)
_ANY_OBJECT = '{"type": "object"}'
# Whitespace llguidance lets a JSON value hold: compact output ends sooner, which matters under max_tokens.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


def compile_grammar(kind: ConstraintKind, text: str) -> str:
    """llguidance's grammar for `text` of `kind`, validated; raises RealmError naming the cause."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_GRAMMAR_BYTES:
        raise RealmError(f"a {kind.name.lower()} constraint is at most {MAX_GRAMMAR_BYTES} bytes")
    try:
        if kind in (ConstraintKind.JSON_SCHEMA, ConstraintKind.JSON_OBJECT):
            schema = _ANY_OBJECT if kind == ConstraintKind.JSON_OBJECT else text
            if not isinstance(json.loads(schema), dict):
                raise RealmError("a JSON schema must be a JSON object")
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        elif kind == ConstraintKind.REGEX:
            grammar = llguidance.LLMatcher.grammar_from_regex(text)
        else:
            grammar = llguidance.LLMatcher.grammar_from_lark(text)
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise RealmError(f"invalid {kind.name.lower()} constraint: {e}") from None
    error = llguidance.LLMatcher.validate_grammar(grammar, None, limits=_LIMITS)
    if error:
        raise RealmError(f"invalid {kind.name.lower()} constraint: {_first_line(error)}")
    return grammar


class Constraint:
    """A grammar's matcher over one sequence's generated tokens.

    `allowed()` is the additive mask of the next token (end-of-generation ids only once the grammar
    accepts); `consume(tokens)` advances it as far as the grammar allows and counts the rest as
    refused; `rollback(n)` forgets the sequence's last n tokens.
    """

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str) -> None:
        """Raises RealmError when llguidance refuses the grammar (too large, or invalid for this vocabulary)."""
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=_LIMITS)
        self.n_vocab = tokenizer.vocab_size
        self._check("cannot compile the constraint")
        self.bitmask = np.full((1, (self.n_vocab + 31) // 32), -1, dtype=np.int32)
        self._mask: np.ndarray | None = None  # the mask of the current state, once asked for
        self.refused = 0  # tokens the grammar refused (and all after them), still in the sequence

    def _check(self, what: str) -> None:
        if self.matcher.is_error():
            raise RealmError(f"{what}: {_first_line(self.matcher.get_error())}")

    def _compute_mask(self) -> np.ndarray:
        # llguidance drops the GIL while it computes (tens of microseconds on a 262k vocabulary). Done
        # in the sampling thread: a worker thread would wait for the GIL behind the guests' threads.
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self.bitmask)
        self._check("the constraint failed")
        # Each mask byte becomes its 8 additive values at once: a table lookup, tens of microseconds.
        return np.take(_BYTE_BIAS, self.bitmask[0].view(np.uint8), axis=0).reshape(-1)[:self.n_vocab]

    def allowed(self) -> np.ndarray:
        """The (n_vocab,) float32 additive mask of the next token: 0 where the grammar allows it, -inf
        elsewhere (adding it to the logits costs one vector add)."""
        if self._mask is None:
            self._mask = self._compute_mask()
        return self._mask

    def consume(self, tokens: list[int]) -> int:
        """Advance past the longest prefix of `tokens` the grammar allows; returns its length. The rest,
        and every token after an earlier refused one, is counted in `refused` (in the sequence, not in
        the grammar) until `rollback` drops it."""
        if not tokens:
            return 0
        taken = 0 if self.refused else max(self.matcher.try_consume_tokens(tokens), 0)
        self._check("the constraint failed")
        self.refused += len(tokens) - taken
        if taken:
            self._mask = None
        return taken

    def masks_along(self, tokens: list[int]) -> np.ndarray:
        """The (k+1, n_vocab) additive masks before each of the last k = len(tokens) consumed tokens and
        after them: what speculative verification applies to each row of a step. The matcher ends
        where it was (refused tokens after them stay refused); RealmError if those tokens were not the
        last consumed."""
        if not self.matcher.rollback(len(tokens)):
            raise RealmError(f"cannot roll the constraint back {len(tokens)} tokens")
        masks = []
        for token in tokens:
            masks.append(self._compute_mask())
            if not self.matcher.consume_token(token):
                self._check("the constraint failed")
                raise RealmError(f"token {token} is not allowed by the constraint here")
        self._mask = self._compute_mask()
        masks.append(self._mask)
        return np.stack(masks)

    def rollback(self, n: int) -> None:
        """Forget the last `n` tokens of the sequence: refused ones first, then consumed ones."""
        dropped = min(n, self.refused)
        self.refused -= dropped
        if n > dropped:
            if not self.matcher.rollback(n - dropped):
                raise RealmError(f"cannot roll the constraint back {n - dropped} tokens")
            self._mask = None

    @property
    def complete(self) -> bool:
        """Whether the grammar accepts what was generated and nothing else may follow."""
        return not self.refused and bool(self.matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """Whether generation may end here."""
        return not self.refused and bool(self.matcher.is_accepting())


def _first_line(message: str) -> str:
    """llguidance's message on one line, at most 300 characters."""
    text = " ".join(line.strip() for line in message.strip().splitlines() if line.strip())
    return text[:300] or "unknown error"
