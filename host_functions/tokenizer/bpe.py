"""Byte-level BPE (`tokenizer.ggml.model == "gpt2"`: Llama 3, Qwen 2).

A pre-tokenizer (pre_tokenizers.py) cuts the text into words, each word's UTF-8 bytes are mapped
to GPT-2's printable characters, and adjacent symbols are merged by the rank of their pair in
``tokenizer.ggml.merges`` (llama.cpp's ``llm_tokenizer_bpe``).
"""

from __future__ import annotations

import heapq

from host_functions.formats.gguf_file import PackedStrings
from host_functions.tokenizer.interrupt import INTERRUPT_EVERY, Interrupt, drain, never
from host_functions.tokenizer.pre_tokenizers import PreTokenizer
from host_functions.tokenizer.vocab_index import VocabIndex


def _gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_UNICODE = _gpt2_byte_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_UNICODE.items()}


class BpeModel:
    """llama.cpp's `llm_tokenizer_bpe` with GPT-2 byte encoding."""

    def __init__(self, vocab: VocabIndex, pre: PreTokenizer, merges: PackedStrings) -> None:
        self._vocab = vocab
        self._pre = pre
        self.clean_spaces = pre.clean_spaces
        # Merge line "left right" -> its rank, the first line winning; packed, where a dict of string pairs
        # would cost many times the merges' bytes (docs/engine.md).
        self._ranks = VocabIndex(merges, unique=False)

    def rank(self, left: str, right: str) -> int | None:
        """The rank of the merge line "left right", None when no line merges that pair."""
        # llama.cpp cuts a merge line at its first space after the first character: an empty left side,
        # or one with a space of its own, belongs to no line.
        return None if not left or " " in left[1:] else self._ranks.get(f"{left} {right}")

    def prepare(self, fragment: str, after_special: bool) -> str:
        """Raw text goes to the pre-tokenizer as it is."""
        return fragment

    def _words(self, text: str) -> list[str]:
        return ["".join(_BYTE_TO_UNICODE[b] for b in p.encode("utf-8")) for p in self._pre.words(text)]

    def encode(self, text: str, out: list[int], interrupt: Interrupt = never) -> None:
        """Append the ids of a fragment of raw text to `out`; raises whatever `interrupt` raises."""
        to_id = self._vocab
        done = 0
        for word in self._words(text):
            done += len(word)
            if done >= INTERRUPT_EVERY:
                done = 0
                interrupt()
            whole = to_id.get(word) if self._pre.ignore_merges else None
            if whole is not None:
                out.append(whole)
                continue
            for piece in self._merge(word, interrupt):
                tid = to_id.get(piece)
                if tid is not None:
                    out.append(tid)
                    continue
                # llama.cpp looks each byte up as a one-byte string: only ASCII can hit.
                out.extend(t for b in piece.encode("utf-8") if b < 0x80 and (t := to_id.get(chr(b))) is not None)

    def _merge(self, word: str, interrupt: Interrupt) -> list[str]:
        symbols = list(word)
        n = len(symbols)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n)) + [-1]
        queue: list[tuple[int, int, int, str]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            rank = self.rank(symbols[left], symbols[right])
            if rank is not None:
                heapq.heappush(queue, (rank, left, right, symbols[left] + symbols[right]))

        for i in range(1, n):
            if i % INTERRUPT_EVERY == 0:
                interrupt()
            push(i - 1, i)
        for _, left, right, merged in drain(queue, interrupt):
            if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != merged:
                continue  # outdated pair
            symbols[left] = merged
            symbols[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])
        return [s for s in symbols if s]

    def normal_bytes(self, text: str) -> bytes:
        """The bytes a NORMAL token's text stands for (GPT-2's characters back to bytes)."""
        out = bytearray()
        for ch in text:
            b = _UNICODE_TO_BYTE.get(ch)
            if b is not None:
                out.append(b)
            else:  # llama_decode_text's marker for a character outside the byte map
                out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        return bytes(out)
