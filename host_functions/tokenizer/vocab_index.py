"""Token text -> id over a packed vocabulary (or merge text -> rank), without a dict of every piece.

A dict of a large vocabulary holds one string object per token plus the table, much of what a small
model's process spends outside its weights. `VocabIndex` keeps the pieces packed (one UTF-8 blob and
offsets, `PackedStrings`) and finds them through an open-addressing table of int32 ids, twice the
vocabulary's size, probed linearly from the piece's CRC-32. A lookup is slower than a dict's; the
tokenizers' merge loops make a few per input character (docs/engine.md has the sizes and timings).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from itertools import pairwise
from zlib import crc32

import numpy as np

from host_functions.formats.gguf_file import PackedStrings

_EMPTY = -1


class DuplicatePiece(ValueError):
    """Two ids have the same piece; `.first` and `.second` are the ids, `.piece` the text."""

    def __init__(self, piece: str, first: int, second: int) -> None:
        super().__init__(f"{piece!r} has ids {first} and {second}")
        self.piece, self.first, self.second = piece, first, second


class VocabIndex:
    """The id of each piece of a vocabulary (`get`), and the piece of each id (`piece`)."""

    def __init__(self, pieces: PackedStrings, unique: bool = True) -> None:
        """Index `pieces`; raises DuplicatePiece when two ids share one piece, unless not `unique`, where
        the lowest id of a repeated piece is the one found."""
        self._blob = pieces.blob
        self._offsets = array("q", pieces.offsets.tobytes())
        self._size = len(pieces)
        slots = 1 << max(4, (2 * self._size - 1).bit_length())  # load factor at most 1/2
        self._mask = slots - 1
        hashes = np.fromiter(map(crc32, _each_bytes(pieces)), np.uint32, self._size)
        if unique:
            self._check_unique(pieces, hashes)
        self._table = array("i", _probe_table(hashes.astype(np.int64) & self._mask, slots).tobytes())

    def __len__(self) -> int:
        return self._size

    def get(self, text: str) -> int | None:
        """The id whose piece is `text`, or None."""
        key = text.encode("utf-8", "surrogatepass")
        table, offsets, mask = self._table, self._offsets, self._mask
        slot = crc32(key) & mask
        while (tid := table[slot]) != _EMPTY:
            start = offsets[tid]
            if offsets[tid + 1] - start == len(key) and self._blob.startswith(key, start):
                return tid
            slot = (slot + 1) & mask
        return None

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.get(text) is not None

    def piece(self, tid: int) -> str:
        """The text of id `tid` (0 <= tid < len)."""
        return self._blob[self._offsets[tid]:self._offsets[tid + 1]].decode("utf-8")

    @staticmethod
    def _check_unique(pieces: PackedStrings, hashes: np.ndarray) -> None:
        # Equal pieces have equal hashes: compare the bytes only within runs of one hash (a few pairs).
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        seen: dict[bytes, int] = {}
        for k in np.unique(np.concatenate([same, same + 1])):
            tid = int(order[k])
            key = pieces.bytes_at(tid)
            first = seen.setdefault(key, tid)
            if first != tid:
                raise DuplicatePiece(key.decode("utf-8"), min(first, tid), max(first, tid))


def _each_bytes(pieces: PackedStrings) -> Iterator[bytes]:
    blob, ends = pieces.blob, pieces.offsets.tolist()
    return (blob[a:b] for a, b in pairwise(ends))


def _probe_table(home: np.ndarray, slots: int) -> np.ndarray:
    """Linear-probing table of ids: id i sits at the first free slot from home[i] on.

    Placed in rounds, all ids at once: each round every unplaced id bids for its current slot, the
    lowest id wins a free slot, and the others move one slot on. An id only ever passes occupied
    slots, so a lookup that probes from home[i] to the first empty slot finds it; ids of one piece
    share a home and bid together, so the lowest of them sits first on that path.
    """
    table = np.full(slots, _EMPTY, np.int32)
    ids = np.arange(home.size, dtype=np.int64)
    slot = home.copy()
    while ids.size:
        free = table[slot] == _EMPTY
        bidders, bids = ids[free], slot[free]
        won_slots, first = np.unique(bids, return_index=True)  # bidders are in id order: first = lowest id
        table[won_slots] = bidders[first]
        placed = np.zeros(ids.size, bool)
        placed[np.flatnonzero(free)[first]] = True
        ids, slot = ids[~placed], (slot[~placed] + 1) & (slots - 1)
    return table
