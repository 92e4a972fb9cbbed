"""The header of a GGUF file (metadata and tensor table) read in one pass, with long arrays packed.

gguf's `GGUFReader` builds two NumPy views per string of every array and then a Python list of them:
on a 262144-token vocabulary that took 12 s and 790 MB on first use of a model. This reader walks the
same layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) with `struct` over a read-only
mmap and packs a long array as it reads it: strings straight into one blob (`PackedStrings`), numbers
as one `np.frombuffer`. It yields what gguf's reader gives through `ReaderField.contents()` (tests hold
it equal on every model in tests/data); every declared count and length is checked against the bytes
left before anything is read or allocated.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from host_functions.formats.packed_strings import PackedStrings

PACKED_MIN = 1024  # metadata arrays at least this long are held packed, not as Python lists
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays: deeper than any writer makes, well inside Python's recursion limit
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
_SCALARS = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
            GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
            GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
            GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}


class HeaderError(ValueError):
    """The bytes are not a well-formed GGUF header (the message says where)."""


def read_header(path: Path) -> dict[str, Any]:
    """{"metadata": key -> value, "tensors": [[name, type, numpy-order shape, file offset, nbytes]]}.

    Raises HeaderError for a file that is not GGUF, is cut short, or declares impossible sizes, and
    UnicodeDecodeError for text that is not UTF-8."""
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise HeaderError("the file is empty") from None
    with mm:
        try:
            return _Cursor(mm).header()
        except struct.error as exc:  # a length field itself cut off by the end of the file
            raise HeaderError(f"the file is truncated ({exc})") from None


class _Cursor:
    """A read position in the mapped file and the byte order its version field revealed."""

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm, self.pos = mm, 0
        self.order: Literal["<", ">"] = "<"

    def header(self) -> dict[str, Any]:
        if self.take(4) != _MAGIC:
            raise HeaderError("GGUF magic invalid")
        if struct.unpack_from("<I", self.mm, self.pos)[0] & 0xFFFF == 0:
            self.order = ">"  # a file written on a big-endian machine
        version = self.scalar("I")
        if version not in _VERSIONS:
            raise HeaderError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = self.scalar("Q"), self.scalar("Q")
        metadata: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors,
                                    "GGUF.kv_count": n_kv}
        self.need(n_kv, 13)  # the least a key-value takes: an empty key, its type and one byte
        for _ in range(n_kv):
            key = self.string()
            if key in metadata:
                raise HeaderError(f"duplicate metadata key {key}")
            metadata[key] = self.value(self.scalar("I"))
        tensors = self.tensor_table(n_tensors)
        data_start = self.aligned(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        for t in tensors:
            t[3] += data_start
        return {"metadata": metadata, "tensors": tensors}

    def tensor_table(self, count: int) -> list[list[Any]]:
        self.need(count, 24)  # an empty name, no dims, type and offset
        tensors, names = [], set()
        for _ in range(count):
            name = self.string()
            if name in names:
                raise HeaderError(f"duplicate tensor {name}")
            names.add(name)
            n_dims = self.scalar("I")
            if n_dims > MAX_DIMS:
                raise HeaderError(f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")
            dims = [self.scalar("Q") for _ in range(n_dims)]
            qtype = GGMLQuantizationType(self.scalar("I"))
            offset = self.scalar("Q")
            block, size = GGML_QUANT_SIZES[qtype]
            n_elements = int(np.prod(dims, dtype=object))
            tensors.append([name, int(qtype), list(reversed(dims)), offset, n_elements * size // block])
        return tensors

    def aligned(self, alignment: Any) -> int:
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise HeaderError(f"invalid alignment {alignment!r}: must be a power of two")
        return -(-self.pos // alignment) * alignment

    # --- values ----------------------------------------------------------------------------

    def value(self, raw_type: int, depth: int = 0) -> Any:
        kind = GGUFValueType(raw_type)
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            if depth >= MAX_NESTING:
                raise HeaderError(f"arrays nested more than {MAX_NESTING} deep at byte {self.pos}")
            return self.array(GGUFValueType(self.scalar("I")), self.scalar("Q"), depth + 1)
        return self.scalar(_SCALARS[kind])

    def array(self, kind: GGUFValueType, count: int, depth: int) -> Any:
        if kind == GGUFValueType.STRING:
            return self.strings(count)
        if kind == GGUFValueType.ARRAY:
            self.need(count, 12)
            return [self.value(kind, depth) for _ in range(count)]
        dtype = np.dtype(GGUFReader.gguf_scalar_to_np[kind]).newbyteorder(self.order)
        values = np.frombuffer(self.take(self.need(count, dtype.itemsize)), dtype)
        values = values.astype(dtype.newbyteorder("="))
        return values if count >= PACKED_MIN else values.tolist()

    def strings(self, count: int) -> Any:
        """`count` strings: a list, or PackedStrings when long (read without a str per string)."""
        self.need(count, 8)
        if count < PACKED_MIN:
            return [self.string() for _ in range(count)]
        mm, unpack, length = self.mm, struct.Struct(self.order + "Q").unpack_from, len(self.mm)
        parts, offsets, pos = [], np.zeros(count + 1, np.int64), self.pos
        for i in range(count):
            (n,) = unpack(mm, pos)
            if n > length - pos - 8:
                raise HeaderError(f"string at byte {pos} runs past the end of the file: truncated or corrupt")
            parts.append(mm[pos + 8:pos + 8 + n])
            offsets[i + 1] = offsets[i] + n
            pos += 8 + n
        self.pos = pos
        blob = b"".join(parts)
        _check_utf8(blob, offsets)
        return PackedStrings(blob, offsets)

    def string(self) -> str:
        return self.take(self.scalar("Q")).decode("utf-8")

    def scalar(self, code: str) -> Any:
        size = struct.calcsize(code)
        (value,) = struct.unpack(self.order + code, self.take(size))
        return value

    def need(self, count: int, item_bytes: int) -> int:
        """count * item_bytes, once checked against the bytes left (HeaderError when they run short)."""
        total = count * item_bytes
        if total > len(self.mm) - self.pos:
            raise HeaderError(f"{count} items at byte {self.pos} run past the end of the file: truncated or corrupt")
        return total

    def take(self, n: int) -> bytes:
        if n > len(self.mm) - self.pos:
            raise HeaderError(f"{n} bytes at byte {self.pos} run past the end of the file: truncated or corrupt")
        out = self.mm[self.pos:self.pos + n]
        self.pos += n
        return out


def _check_utf8(blob: bytes, offsets: np.ndarray) -> None:
    """Each string of the blob is UTF-8: the whole is, and no string starts inside a character."""
    blob.decode("utf-8")  # raises UnicodeDecodeError
    starts = offsets[:-1][np.diff(offsets) > 0]
    continuation = (np.frombuffer(blob, np.uint8)[starts] & 0xC0) == 0x80
    if continuation.any():
        at = int(starts[np.flatnonzero(continuation)[0]])
        raise UnicodeDecodeError("utf-8", blob, at, at + 1, "a string starts inside a character")
