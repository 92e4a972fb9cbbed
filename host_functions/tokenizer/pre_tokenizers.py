"""Byte-level BPE pre-tokenizers: the regexes that cut text into words before merging, per
`tokenizer.ggml.pre` (llama.cpp's table in `llm_tokenizer_bpe` and `llama_vocab::load`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import regex

from host_functions.errors import UnsupportedError

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


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
        pieces = [text]
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
        return pieces


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
