"""Our tokenizer as llguidance sees it: every token's bytes, special tokens marked, EOS the end-of-generation ids."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import llguidance

from host_functions.tokenizer import Tokenizer, TokenType

# llguidance's marker for a special token's bytes: never text a grammar can produce.
_SPECIAL_PREFIX = b"\xff"
_CACHE: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _Vocabulary:
    """The duck-typed tokenizer llguidance's TokenizerWrapper reads (tokens, eos, specials, encode)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.end_of_generation_ids)
        self.bos_token_id = tokenizer.bos_id
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        types = tokenizer.token_types
        for tid, text in enumerate(tokenizer.every_token_bytes()):
            if int(types[tid]) in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.UNUSED):
                self.tokens.append(_SPECIAL_PREFIX + tokenizer.piece(tid).encode("utf-8"))
                self.special_token_ids.append(tid)
            else:
                self.tokens.append(text)
        # A token spelling each single byte (a byte-fallback token, or a one-character one), first id wins.
        self._byte_tokens: dict[int, int] = {}
        for tid, text in enumerate(self.tokens):
            if len(text) == 1:
                self._byte_tokens.setdefault(text[0], tid)

    def __call__(self, text: bytes) -> Sequence[int]:
        """llguidance re-tokenizes forced text with this: the tokens must spell exactly `text`. Where ours
        do not (a SentencePiece vocabulary without a space token writes " " as the bytes of "▁"), the
        text byte by byte, if the vocabulary spells every byte."""
        ids = self._tokenizer.encode(text.decode("utf-8", errors="replace"), add_bos=False, continuation=True)
        if b"".join(self.tokens[i] for i in ids) == text or not all(b in self._byte_tokens for b in text):
            return ids
        return [self._byte_tokens[b] for b in text]


def guidance_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """The llguidance tokenizer of a model's vocabulary, built once per Tokenizer (about a second for
    262k tokens) and shared by every constraint on that model. Every end-of-generation id counts as EOS,
    so a constraint allows any of them, and only once its grammar accepts."""
    with _LOCK:
        cached = _CACHE.get(tokenizer)
        if cached is None:
            eos = sorted(tokenizer.end_of_generation_ids)
            wrapper = llguidance.TokenizerWrapper(_Vocabulary(tokenizer))
            cached = _CACHE[tokenizer] = llguidance.LLTokenizer(wrapper, n_vocab=tokenizer.vocab_size, eos_token=eos)
        return cached

