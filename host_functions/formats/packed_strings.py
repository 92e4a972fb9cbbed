"""Many strings as one UTF-8 blob and offsets: how Realm holds a long metadata array (a vocabulary)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import pairwise

import numpy as np


class PackedStrings(Sequence[str]):
    """A long array of strings as one UTF-8 blob and n + 1 byte offsets (string i is
    blob[offsets[i]:offsets[i + 1]]): a 262144-token vocabulary takes about 4 MB."""

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        offsets = np.asarray(offsets, np.int64)
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != len(blob) or \
                np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must rise from 0 to the blob's length")
        self.blob = blob
        self.offsets = offsets

    @classmethod
    def pack(cls, strings: Sequence[str]) -> PackedStrings:
        """Pack a list of strings; raises UnicodeEncodeError for one UTF-8 cannot encode."""
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
        return cls(b"".join(encoded), offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, index: int) -> str:  # type: ignore[override]  # no slices
        return self.bytes_at(index).decode("utf-8")

    def bytes_at(self, index: int) -> bytes:
        """String `index` as its UTF-8 bytes; raises IndexError out of range."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} strings")
        index %= n
        return self.blob[self.offsets[index]:self.offsets[index + 1]]

    def __iter__(self) -> Iterator[str]:
        blob, ends = self.blob, self.offsets.tolist()
        return (blob[a:b].decode("utf-8") for a, b in pairwise(ends))
