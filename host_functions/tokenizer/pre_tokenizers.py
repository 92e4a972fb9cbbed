"""Byte-level BPE pre-tokenizers: the regexes that cut text into words before merging, per
`tokenizer.ggml.pre` (llama.cpp's table in `llm_tokenizer_bpe` and `llama_vocab::load`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate, pairwise

import numpy as np
import regex

from host_functions.errors import UnsupportedError

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Letters and digits Unicode assigned after 15.1 (in 16.0 and 17.0). llama.cpp's character tables are
# Unicode 15.1's, where these are unassigned, and its splitters take an unassigned code point as they
# take punctuation; the `regex` module knows them as \p{L} / \p{N}. The splits see each of them as
# U+0378, unassigned in every Unicode version, so words are cut where llama.cpp cuts them.
_AFTER_UNICODE_15_1 = (
    (0x558, 0x558), (0x58B, 0x58C), (0x88F, 0x88F), (0xC5C, 0xC5C), (0xCDC, 0xCDC), (0x1C89, 0x1C8A),
    (0x208F, 0x208F), (0x209D, 0x209F), (0xA7CB, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7DA, 0xA7DD),
    (0xA7E2, 0xA7E2), (0xA7F1, 0xA7F1), (0xAB6C, 0xAB6D), (0x105C0, 0x105F3), (0x107BB, 0x107BF),
    (0x10940, 0x10959), (0x10D40, 0x10D65), (0x10D6F, 0x10D85), (0x10EC2, 0x10EC7), (0x10ED9, 0x10EEE),
    (0x11380, 0x11389), (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7),
    (0x113D1, 0x113D1), (0x113D3, 0x113D3), (0x116D0, 0x116E3), (0x11B0A, 0x11B0A), (0x11BC0, 0x11BE0),
    (0x11BF0, 0x11BF9), (0x11DB0, 0x11DDB), (0x11DE0, 0x11DE9), (0x11DF1, 0x11DF1), (0x1246F, 0x1246F),
    (0x12475, 0x1247F), (0x12550, 0x12686), (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16130, 0x16139),
    (0x16D40, 0x16D6C), (0x16D70, 0x16D79), (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6),
    (0x187F8, 0x187FF), (0x18CD6, 0x18CDA), (0x18CFF, 0x18CFF), (0x18D09, 0x18D20), (0x18D80, 0x18DF2),
    (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128), (0x1B168, 0x1B168), (0x1CCF0, 0x1CCF9),
    (0x1D6A6, 0x1D6A6), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF),
    (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5FA), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5),
    (0x1E6E7, 0x1E6ED), (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E),
    (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479), (0x3D000, 0x3FC3F),
)
_STARTS = np.array([a for a, _ in _AFTER_UNICODE_15_1], np.uint32)
_ENDS = np.array([b for _, b in _AFTER_UNICODE_15_1], np.uint32)
_UNASSIGNED = 0x378


def _as_llama_cpp_sees_it(text: str) -> str:
    """`text` with every character of _AFTER_UNICODE_15_1 replaced by U+0378 (one character for one: the
    positions stay). Raises UnicodeEncodeError for a lone surrogate."""
    if text.isascii():
        return text
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    high = np.flatnonzero(codes >= _STARTS[0])
    found = np.searchsorted(_ENDS, codes[high])  # the first range that ends at or after each code
    newer = found < len(_ENDS)
    newer[newer] = codes[high[newer]] >= _STARTS[found[newer]]
    if not newer.any():
        return text
    codes = codes.copy()
    codes[high[newer]] = _UNASSIGNED
    return codes.tobytes().decode("utf-32-le")


@dataclass(frozen=True)
class PreTokenizer:
    """One row of llama.cpp's pre-tokenizer table."""

    splits: tuple[str, ...]  # applied in turn, each one splitting the pieces of the previous
    ignore_merges: bool = False  # a whole word that is a token is taken as is
    add_bos: bool = False
    clean_spaces: bool = True  # detokenize drops the space in " ?", " 's" and the like

    @cached_property
    def _patterns(self) -> list[regex.Pattern[str]]:
        return [regex.compile(p) for p in self.splits]

    def words(self, text: str) -> list[str]:
        """`text` cut by each split in turn. Like llama.cpp's unicode_regex_split, the matches and
        the text between them both become pieces."""
        probe = _as_llama_cpp_sees_it(text)  # cut where llama.cpp cuts, then take those pieces of `text`
        pieces = [probe]
        for pattern in self._patterns:
            split: list[str] = []
            for piece in pieces:
                end = 0
                for m in pattern.finditer(piece):
                    if m.start() > end:
                        split.append(piece[end:m.start()])
                    if m.end() > m.start():
                        split.append(m.group())
                    end = m.end()
                if end < len(piece):
                    split.append(piece[end:])
            pieces = split
        if probe is text:
            return pieces
        starts = [0, *accumulate(map(len, pieces))]
        return [text[a:b] for a, b in pairwise(starts)]


_DEFAULT_PRE = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"))
_LLAMA3_PRE = PreTokenizer((_LLAMA3_SPLIT,), ignore_merges=True, add_bos=True)
_QWEN2_PRE = PreTokenizer((_QWEN2_SPLIT,), clean_spaces=False)
_GPT2_PRE = PreTokenizer((_GPT2_SPLIT,))

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "": _DEFAULT_PRE,  # llama.cpp warns and uses the default when the key is missing
    "default": _DEFAULT_PRE,
    # every name llama.cpp maps to LLAMA_VOCAB_PRE_TYPE_LLAMA3, and to ..._QWEN2
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"), _LLAMA3_PRE),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"), _QWEN2_PRE),
    "gpt-2": _GPT2_PRE, "gpt2": _GPT2_PRE,
}


def pre_tokenizer(name: str) -> PreTokenizer:
    """The pre-tokenizer `tokenizer.ggml.pre` names ("" when missing); UnsupportedError for one
    Realm does not implement."""
    found = PRE_TOKENIZERS.get(name)
    if found is None:
        raise UnsupportedError(f"BPE pre-tokenizer {name!r} is not supported")
    return found
