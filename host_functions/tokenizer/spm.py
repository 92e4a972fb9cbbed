"""SentencePiece-style tokenization (`tokenizer.ggml.model == "llama"`: Llama 2, Gemma 3).

Spaces become U+2581, then adjacent symbols are merged greedily by the score of the token they
form (llama.cpp's ``llm_tokenizer_spm``); symbols that form no token fall back to ``<0xNN>`` byte
tokens. Where llama.cpp aborts on a byte with no ``<0xNN>`` token, we emit ``<unk>``.
"""

from __future__ import annotations

import heapq
from array import array

from host_functions.errors import UnsupportedError
from host_functions.tokenizer.interrupt import Interrupt, drain, never
from host_functions.tokenizer.vocab_index import VocabIndex

SPACE_MARK = "\u2581"  # SentencePiece's visible space, "▁"


class SpmModel:
    """llama.cpp's `llm_tokenizer_spm`: greedy bigram merges by token score."""

    clean_spaces = False

    def __init__(self, vocab: VocabIndex, scores: array, add_space_prefix: bool, unk_id: int | None) -> None:
        self._vocab, self._scores = vocab, scores
        self._add_space_prefix, self._unk_id = add_space_prefix, unk_id
        self._byte_ids = [self._byte_token(b) for b in range(256)]

    def _byte_token(self, b: int) -> int | None:
        # llama_vocab::byte_to_token: the <0xNN> token, else the byte itself as a token.
        found = self._vocab.get(f"<0x{b:02X}>")
        if found is None and b < 0x80:
            found = self._vocab.get(chr(b))
        return found

    def prepare(self, fragment: str, after_special: bool) -> str:
        """A fragment of raw text as the merges see it: a leading space where the vocabulary adds
        one (at the start and after a special token), every space as SPACE_MARK."""
        if self._add_space_prefix and after_special:
            fragment = " " + fragment
        return fragment.replace(" ", SPACE_MARK)

    def encode(self, text: str, out: list[int], interrupt: Interrupt = never) -> None:
        """Append the ids of a prepared fragment to `out`. Raises UnsupportedError for a byte the
        vocabulary has no token for (and no unknown token), and whatever `interrupt` raises."""
        to_id, scores = self._vocab, self._scores
        n = len(text)
        # One symbol per code point: symbol i starts at text[i]; its length (0 once merged away) and
        # neighbours change as pairs merge.
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n)) + [-1]

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = text[left:right + size[right]]
            tid = to_id.get(merged)
            if tid is not None:
                # highest score first; ties go to the leftmost pair (llm_bigram_spm::comparator)
                heapq.heappush(queue, (-scores[tid], left, right, len(merged)))

        # The first pairs in one pass and one heapify (same heap order as pushing them one by one).
        pairs = map(to_id.get, [text[i:i + 2] for i in range(n - 1)])
        queue = [(-scores[tid], i, i + 1, 2) for i, tid in enumerate(pairs) if tid is not None]
        heapq.heapify(queue)
        for _, left, right, merged_size in drain(queue, interrupt):
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != merged_size:
                continue  # one side changed since this pair was queued
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])

        i = 0 if n else -1
        while i != -1:
            piece = text[i:i + size[i]]
            tid = to_id.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                self._byte_fallback(piece, out)
            i = nxt[i]

    def _byte_fallback(self, piece: str, out: list[int]) -> None:
        for b in piece.encode("utf-8"):
            tid = self._byte_ids[b]
            if tid is None:
                tid = self._unk_id
            if tid is None:
                raise UnsupportedError(f"vocabulary has no token for byte 0x{b:02X} and no unknown token")
            out.append(tid)

    def normal_bytes(self, text: str) -> bytes:
        """The bytes a NORMAL token's text stands for (SPACE_MARK back to a space)."""
        return text.replace(SPACE_MARK, " ").encode("utf-8")
