"""Special tokens cut out of raw text before the model's own algorithm runs (llama.cpp's
``tokenizer_st_partition``): USER_DEFINED tokens always, CONTROL and UNKNOWN tokens only when the
caller asks to parse specials; longer tokens are cut first.

Where llama.cpp's sort is unstable, special tokens of equal byte length are cut in id order. Tokens
with llama.cpp's RSTRIP attribute (phi-3's, `special_tokens.rstrip_ids`) drop the ASCII whitespace
that follows them in their fragment. LSTRIP, which llama.cpp sets only for vocabularies Realm does
not read (jina, modern-bert), is not applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from host_functions.tokenizer.interrupt import Interrupt, never
from host_functions.tokenizer.special_tokens import rstrip_ids
from host_functions.tokenizer.token_type import TokenType
from host_functions.tokenizer.vocab_index import VocabIndex

# Tokens cut out of raw text; CONTROL and UNKNOWN only when the caller asks to parse specials
# (llama.cpp's `cache_special_tokens`).
_PARTITIONED_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)
_C_SPACE = frozenset(" \t\n\v\f\r")  # C's isspace, which llama.cpp's RSTRIP applies byte by byte


class SpecialTokens:
    """The tokens cut out of raw text, found in a few passes over the text.

    llama.cpp cuts each special token in turn, longest first (ties by id), from every fragment
    left so far, left to right without overlaps. Doing that literally costs a scan of the text
    per special token (Gemma has 6414). Here one regex pass over the text (a trie of the
    tokens, in a lookahead, so every start position is tried) yields the longest special
    token at each position; every special token that occurs is a prefix of one of those.
    Only the tokens that occur are then cut, in llama.cpp's order, each by a left-to-right
    search that skips what longer tokens took: the same cuts, in time linear in the text
    times the longest token.
    """

    def __init__(self, table: list[tuple[str, int, bool]], rstrip: frozenset[int] = frozenset()) -> None:
        self._table = table  # (text, id, needs parse_special), in cutting order
        self._rstrip = rstrip  # ids that drop the whitespace after them
        self._rank = {text: k for k, (text, _, _) in enumerate(table)}
        self._longest = max((len(text) for text, _, _ in table), default=0)
        # the special tokens that are prefixes of each one (itself included), as table ranks
        self._prefixes = {text: [self._rank[text[:n]] for n in range(1, len(text) + 1) if text[:n] in self._rank]
                          for text in self._rank}
        self._finder: re.Pattern[str] | None = None  # built on first use: a trie of every special token
        # A run of one character longer than any token holds no more distinct tokens than
        # a run of exactly that length: shortening runs keeps the finder's work linear.
        self._runs = re.compile(rf"(.)\1{{{self._longest},}}", re.DOTALL) if self._longest else None

    @classmethod
    def of_vocabulary(cls, vocab: VocabIndex, types: np.ndarray, model_name: str = "") -> SpecialTokens:
        """Every token of the vocabulary that is cut out of raw text, with whether it needs
        parse_special, longest first; `model_name` (`general.name`) decides which drop the
        whitespace after them (`special_tokens.rstrip_ids`)."""
        wanted = np.flatnonzero(np.isin(types, [int(t) for t in _PARTITIONED_TYPES])).tolist()
        table = [(vocab.piece(i), i, int(types[i]) != TokenType.USER_DEFINED) for i in wanted]
        table.sort(key=lambda row: -len(row[0].encode("utf-8")))  # stable: equal lengths by id
        return cls(table, rstrip_ids(model_name, vocab, wanted))

    def partition(self, text: str, parse_special: bool, interrupt: Interrupt = never) -> list[str | int]:
        """`text` as raw-text fragments and the ids of the special tokens cut out of it."""
        occurrences = self._occurrences(text, parse_special)
        if not occurrences:
            return [text] if text else []
        taken = bytearray(len(text))  # 1 where a cut token (or the whitespace it strips) covers the character
        cuts: list[tuple[int, int, int]] = []  # (start, end of what the cut takes, id)
        for rank in sorted(occurrences):
            interrupt()
            token, tid, _ = self._table[rank]
            size = len(token)
            for start in self._starts(text, token, taken, occurrences[rank]):
                stop = start + size
                if tid in self._rstrip:  # only within the fragment: up to the next cut
                    while stop < len(text) and not taken[stop] and text[stop] in _C_SPACE:
                        stop += 1
                taken[start:stop] = b"\x01" * (stop - start)
                cuts.append((start, stop, tid))
        cuts.sort()
        fragments: list[str | int] = []
        end = 0
        for start, stop, tid in cuts:
            if start > end:
                fragments.append(text[end:start])
            fragments.append(tid)
            end = stop
        if end < len(text):
            fragments.append(text[end:])
        return fragments

    @staticmethod
    def _starts(text: str, token: str, taken: bytearray, known: list[int] | None) -> Iterator[int]:
        """Where `token` is cut: left to right, not overlapping itself or what is taken already.

        `known` lists every position where it occurs; None means search the text for them.
        """
        size, pos = len(token), 0
        if known is not None:
            for start in known:
                if start >= pos and taken.find(1, start, start + size) < 0:
                    yield start
                    pos = start + size
            return
        while (start := text.find(token, pos)) >= 0:
            clash = taken.find(1, start, start + size)
            if clash < 0:
                yield start
                pos = start + size
            else:  # every start before the next free character overlaps the same cut
                pos = taken.find(0, clash)
                if pos < 0:
                    return

    def _occurrences(self, text: str, parse_special: bool) -> dict[int, list[int] | None]:
        """Table rank of each special token in `text` (that applies) -> the positions where it
        occurs, or None where they are not known (the text has long runs of one character)."""
        if not self._table or not text:
            return {}
        if self._finder is None:
            self._finder = re.compile(f"(?=({_trie_pattern(self._rank)}))", re.DOTALL)
        assert self._runs is not None
        probe, shortened = self._runs.subn(lambda m: m.group(1) * self._longest, text)
        found: dict[int, list[int] | None] = {}
        if shortened:  # positions in the probe are not positions in the text
            for longest in set(self._finder.findall(probe)):
                found.update(dict.fromkeys(self._prefixes[longest]))
        else:
            positions: dict[int, list[int]] = {}
            for match in self._finder.finditer(text):
                for rank in self._prefixes[match.group(1)]:
                    positions.setdefault(rank, []).append(match.start())
            found.update(positions)
        return {r: at for r, at in found.items() if parse_special or not self._table[r][2]}


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching the longest of `words` that starts where it is tried (a trie: one branch per
    next character, so a position that starts no word fails after one character)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body  # longer words first, then the word ending here

    return build(trie)
