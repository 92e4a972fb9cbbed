"""Token ids back to text, as llama.cpp's ``llama_detokenize(..., remove_special=false,
unparse_special=false)`` gives it: what each token renders as, the BPE space clean-up, and
incremental (streamed) decoding."""

from __future__ import annotations

import codecs
from collections.abc import Callable

from host_functions.tokenizer.token_type import TokenType

# Tokens that render as nothing in text output (llama.cpp: `token_to_piece(special=false)`).
_SILENT_TYPES = frozenset((TokenType.CONTROL, TokenType.UNKNOWN))


def render(kind: int, text: str, normal_bytes: Callable[[str], bytes]) -> bytes:
    """The bytes a token of type `kind` spelled `text` contributes to output text: CONTROL and
    UNKNOWN tokens nothing, USER_DEFINED tokens their text verbatim, NORMAL tokens what the
    vocabulary's `normal_bytes` makes of their text, BYTE tokens (``<0xNN>``) their byte."""
    if kind in _SILENT_TYPES:
        return b""
    if kind == TokenType.USER_DEFINED:
        return text.encode("utf-8")
    if kind == TokenType.NORMAL:
        return normal_bytes(text)
    if kind == TokenType.BYTE:
        return bytes((int(text[3:5], 16),))
    return b""  # UNUSED / UNDEFINED tokens render as nothing, like llama.cpp


def clean_up_spaces(text: bytearray) -> bytearray:
    """llama.cpp's `clean_spaces` passes in detokenize, byte for byte."""
    # pass 1: " ?", " !", " .", " ," lose their space
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] in b"?!.,":
            out.pop()
        out.append(text[i])
    # pass 2: a lone apostrophe between spaces loses both spaces (" ' " -> "'")
    text, out = out, bytearray(out[:1])
    i = 1
    while i < len(text):
        x = text[i]
        if x == 0x27 and i + 1 < len(text) and text[i - 1] == 0x20 and text[i + 1] == 0x20:
            out.pop()
            out.append(x)
            text[i + 1] = 0  # llama.cpp zeroes the skipped space in place; the next check sees it
            i += 2
            continue
        out.append(x)
        i += 1
    # pass 3: " 's", " 'm", " 're", " 've" lose their space
    text, out = out, bytearray(out[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] == 0x27 and i + 1 < len(text):
            x1 = text[i + 1]
            x2 = text[i + 2] if i + 2 < len(text) else None
            if x1 in b"sm" or (x2 is not None and (x1, x2) in ((0x72, 0x65), (0x76, 0x65))):
                out.pop()
        out.append(text[i])
    return out


class StreamDecoder:
    """Incremental detokenizer: `push` each generated token, get the text complete so far.

    A UTF-8 character split across tokens (byte-fallback tokens) is held back until its last
    byte arrives. Every piece keeps its leading space (" Paris" yields " Paris"), as llama.cpp
    streams with `token_to_piece`; the concatenated output equals `Tokenizer.decode` of the same
    ids except where `decode` drops the first token's leading space or cleans up BPE spaces.
    Build it with `Tokenizer.stream_decoder()`.
    """

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, id: int) -> str:
        """Add one token; return the text that is complete now (possibly ""). Raises RealmError for
        an id outside the vocabulary."""
        return self._utf8.decode(self._token_bytes(id))

    def flush(self) -> str:
        """End of stream: return what is still held back (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
