"""The tokenizer's arrays read from GGUF metadata (`tokenizer.ggml.*`), checked as they are read.

Every function raises ModelFormatError for an array of the wrong kind or length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from host_functions.errors import ModelFormatError
from host_functions.formats.gguf_file import PackedStrings
from host_functions.tokenizer.vocab_index import DuplicatePiece, VocabIndex


def index_tokens(tokens: PackedStrings) -> VocabIndex:
    """The vocabulary's text -> id index; ModelFormatError when two ids share a text."""
    if np.any(np.diff(tokens.offsets) == 0):  # llama.cpp renames empty tokens
        tokens = PackedStrings.pack([t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)])
    try:
        return VocabIndex(tokens)
    except DuplicatePiece as dup:
        raise ModelFormatError(f"duplicate token in vocabulary: {dup}") from None


def merges(meta: Mapping[str, Any]) -> PackedStrings:
    """A BPE vocabulary's merge lines ("left right", by rank); ModelFormatError when there are none."""
    found = packed_strings(meta, "tokenizer.ggml.merges")
    if found is None:
        raise ModelFormatError("BPE tokenizer has no merges (tokenizer.ggml.merges)")
    return found


def packed_strings(meta: Mapping[str, Any], key: str) -> PackedStrings | None:
    """A metadata array of strings, packed (None when the key is missing)."""
    values = meta.get(key)
    if values is None or isinstance(values, PackedStrings):
        return values
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ModelFormatError(f"{key} must be a list of strings")
    try:
        return PackedStrings.pack(values)
    except UnicodeEncodeError:
        raise ModelFormatError(f"{key} holds a string that is not valid Unicode") from None


def per_token(meta: Mapping[str, Any], key: str, n: int, default: Any, dtype: type[np.generic]) -> np.ndarray:
    """A per-token metadata array (scores, types) as a fresh NumPy array of length n."""
    values = meta.get(key)
    if values is None:
        return np.full(n, default, dtype)
    numeric = isinstance(values, list) or (isinstance(values, np.ndarray) and values.dtype.kind in "biuf")
    if not numeric:
        raise ModelFormatError(f"{key} must be an array of numbers")
    if len(values) < n:
        raise ModelFormatError(f"{key} has {len(values)} entries, expected {n}")
    try:
        return np.array(values[:n], dtype)
    except (TypeError, ValueError, OverflowError):
        raise ModelFormatError(f"{key} must be an array of numbers") from None
