"""The kinds of vocabulary entry a GGUF file names (`tokenizer.ggml.token_type`)."""

from __future__ import annotations

from enum import IntEnum


class TokenType(IntEnum):
    """GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6
