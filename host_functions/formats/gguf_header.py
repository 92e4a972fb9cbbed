"""Read a GGUF file's header (metadata and tensor table), measuring every size it declares before using it.

A GGUF file declares its own counts and lengths: metadata entries, key and string lengths, array lengths
and element types, the tensor count, each tensor's dimensions, type and offset. A hostile file declares
2^40 of something in a few hundred bytes, so each is checked against the bytes the file has left and
against the limits below before anything is allocated or read: the memory and time a parse takes are
bounded by the header's real size and the caller's `Limits` (a model's, or an adapter's, which needs no
vocabulary), never by what the file claims. Long arrays are
built compactly as they are read (PackedStrings, NumPy arrays), not as one Python object per element,
which is what made gguf's own reader take 0.6 GB and seconds for a 262144-token vocabulary.

Only little-endian GGUF v2 and v3 are read (every file llama.cpp writes). Every failure is a
ModelFormatError whose message names no path: the caller says which file or adapter it was.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from host_functions.errors import ModelFormatError
from host_functions.formats.packed import PackedStrings

MAX_KEY_BYTES = 256  # a metadata key (real ones are under 64 bytes; the specification allows 65535)
MAX_STRING_BYTES = 16 << 20  # one string value (chat templates are tens of kB)
MAX_NAME_BYTES = 255  # a tensor name (llama.cpp's own bound is 63)
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_ELEMENTS = 1 << 48  # of one tensor: beyond any model, far from int64 overflow
DEFAULT_ALIGNMENT = 32



@dataclass(frozen=True)
class Limits:
    """What a GGUF header may declare at most, beyond what the file's size allows."""

    header_bytes: int  # metadata and tensor table together
    keys: int  # metadata entries
    array_length: int  # elements of one metadata array
    array_elements: int  # elements of every metadata array together
    tensors: int


# A model: Gemma 3's header is 6 MB, 36 keys, three arrays of 262144 (about 0.35 s to read).
MODEL_LIMITS = Limits(header_bytes=64 << 20, keys=1 << 12, array_length=1 << 20, array_elements=1 << 22,
                      tensors=1 << 16)
# A LoRA adapter: a few general.* and adapter.* keys, two tensors per adapted weight of each layer.
ADAPTER_LIMITS = Limits(header_bytes=4 << 20, keys=256, array_length=1 << 10, array_elements=1 << 12,
                        tensors=1 << 13)

Buffer = mmap.mmap | bytes  # the header's bytes: a mapping of the file, or a prefix read from it
TensorEntry = list[Any]  # [name, GGML type, NumPy-order shape, absolute offset, byte length]

# GGUF value types: the fixed-size ones by their struct format; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_MIN_FILE = 24  # magic, version and the two counts
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # an empty name, one dimension, type, offset


def _bad(detail: str) -> ModelFormatError:
    return ModelFormatError(f"not a valid GGUF file: {detail}")


def read_file_header(f: BinaryIO, packed_min: int, limits: Limits = MODEL_LIMITS) -> dict[str, Any]:
    """`read_header` of the file open as `f`, memory-mapped (a model's: an operator's file, which no
    tenant truncates under the mapping)."""
    size = os.fstat(f.fileno()).st_size
    if size < _MIN_FILE:
        raise _bad(f"the file is truncated ({size} bytes, shorter than a GGUF header)")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return read_header(buf, size, packed_min, limits)


def read_header(buf: Buffer, size: int, packed_min: int, limits: Limits = MODEL_LIMITS) -> dict[str, Any]:
    """The metadata (key -> value; arrays of at least `packed_min` elements as PackedStrings or NumPy
    arrays) and the tensor table ([name, type, NumPy-order shape, absolute offset, byte length]) of a
    GGUF file of `size` bytes whose first min(size, limits.header_bytes) bytes are `buf`, every declared
    size checked first against the file and `limits`. Raises ModelFormatError, its message naming no path.
    """
    if size < _MIN_FILE:
        raise _bad(f"the file is truncated ({size} bytes, shorter than a GGUF header)")
    return _Header(buf, size, packed_min, limits).read()


class _Header:
    """One pass over the header, front to back; `pos` is the next byte to read."""

    def __init__(self, buf: Buffer, size: int, packed_min: int, limits: Limits) -> None:
        self.buf, self.size, self.packed_min, self.limits = buf, size, packed_min, limits
        self.end = min(size, limits.header_bytes)  # no header byte is read past this
        self.pos = 0
        self.array_elements = 0  # declared so far, by every array

    def read(self) -> dict[str, Any]:
        if self.buf[self.take(4, "the magic"):4] != b"GGUF":
            raise _bad("it does not start with the GGUF magic")
        version = self.scalar("I", "the version")
        if version not in (2, 3):
            raise _bad("big-endian GGUF files are not supported" if version & 0xFFFF == 0
                      else f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = self.count("Q", "the tensor count", self.limits.tensors)
        n_keys = self.count("Q", "the metadata count", self.limits.keys)
        metadata: dict[str, Any] = {}
        for _ in range(n_keys):
            key = self.text("a metadata key", MAX_KEY_BYTES)
            if key in metadata:
                raise _bad(f"metadata key {key} appears twice")
            metadata[key] = self.value(key, self.scalar("I", f"the type of {key}"))
        infos = [self.tensor_info() for _ in range(n_tensors)]
        return {"metadata": metadata, "tensors": self.placed(infos, _alignment(metadata))}

    # -- bytes ----------------------------------------------------------------------------------

    def need(self, n: int, what: str) -> None:
        """Raise unless n more bytes are there: within the file and within the header limit."""
        if n > self.size - self.pos:
            raise _bad(f"the file is truncated ({what} runs past its end)")
        if n > self.end - self.pos:
            raise _bad(f"its header is larger than Realm's limit of {self.limits.header_bytes} bytes (at {what})")

    def take(self, n: int, what: str) -> int:
        """The offset of the next n bytes, which are then consumed."""
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        start = self.take(struct.calcsize("<" + fmt), what)
        return struct.unpack_from("<" + fmt, self.buf, start)[0]

    def count(self, fmt: str, what: str, limit: int) -> int:
        n: int = self.scalar(fmt, what)
        if n > limit:
            raise _bad(f"{what} is {n}, over Realm's limit of {limit}")
        return n

    def raw_text(self, what: str, limit: int) -> bytes:
        n = self.count("Q", f"the length of {what}", limit)
        start = self.take(n, what)
        return self.buf[start:start + n]

    def text(self, what: str, limit: int) -> str:
        try:
            return self.raw_text(what, limit).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f"{what} is not UTF-8") from None

    # -- metadata -------------------------------------------------------------------------------

    def value(self, key: str, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], f"the value of {key}")
        if vtype == _STRING:
            return self.text(f"the value of {key}", MAX_STRING_BYTES)
        if vtype == _ARRAY:
            return self.array(key)
        raise _bad(f"metadata key {key} has unknown value type {vtype}")

    def array(self, key: str) -> Any:
        etype = self.scalar("I", f"the element type of {key}")
        n = self.count("Q", f"the length of {key}", self.limits.array_length)
        self.array_elements += n
        if self.array_elements > self.limits.array_elements:
            raise _bad(f"its arrays hold more than Realm's limit of {self.limits.array_elements} elements (at {key})")
        if etype == _STRING:
            self.need(8 * n, f"the strings of {key}")  # each at least its length field
            return self.strings(key, n)
        if etype not in _SCALARS:
            kind = "an array of arrays (not supported)" if etype == _ARRAY else f"unknown element type {etype}"
            raise _bad(f"metadata key {key} is {kind}")
        dtype = np.dtype("<u1" if etype == 7 else "<" + _SCALARS[etype])  # bool: bytes, then != 0
        start = self.take(n * dtype.itemsize, f"the values of {key}")
        values = np.frombuffer(self.buf, dtype, n, start).copy()  # copied: the file is closed after
        if etype == 7:
            values = values != 0
        return values if n >= self.packed_min else values.tolist()

    def strings(self, key: str, n: int) -> PackedStrings | list[str]:
        """n length-prefixed UTF-8 strings, copied into one blob as they are walked (a vocabulary is
        hundreds of thousands of them: no Python object per string survives the loop)."""
        buf, blob, lengths = self.buf, bytearray(), []
        for i in range(n):
            start = self.pos
            if self.end - start < 8 or (length := _U64.unpack_from(buf, start)[0]) > MAX_STRING_BYTES or \
                    start + 8 + length > self.end:
                self.raw_text(f"string {i} of {key}", MAX_STRING_BYTES)  # raises, saying which bound
            piece = buf[start + 8:start + 8 + length]
            self.pos = start + 8 + length
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"string {i} of {key} is not UTF-8") from None
            blob += piece
            lengths.append(length)
        strings = PackedStrings(bytes(blob), _offsets(lengths))
        return strings if n >= self.packed_min else list(strings)

    # -- tensors --------------------------------------------------------------------------------

    def tensor_info(self) -> TensorEntry:
        """[name, type, NumPy-order shape, offset relative to the data section, byte length]."""
        self.need(_MIN_TENSOR_INFO, "the tensor table")
        name = self.text("a tensor name", MAX_NAME_BYTES)
        n_dims = self.scalar("I", f"the dimension count of tensor {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _bad(f"tensor {name} has {n_dims} dimensions (1..{MAX_DIMS} are possible)")
        dims = [self.scalar("Q", f"the dimensions of tensor {name}") for _ in range(n_dims)]
        qtype = self.scalar("I", f"the type of tensor {name}")
        offset = self.scalar("Q", f"the offset of tensor {name}")
        if min(dims) < 1 or math.prod(dims) > MAX_ELEMENTS:
            raise _bad(f"tensor {name} has dimensions {dims} (each at least 1, at most {MAX_ELEMENTS} elements)")
        if qtype not in GGML_QUANT_SIZES:  # keyed by the IntEnum, which hashes as its int value
            raise _bad(f"tensor {name} has unknown type {qtype}")
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        if dims[0] % block:
            raise _bad(f"tensor {name} has rows of {dims[0]} weights, not whole blocks of "
                      f"{block} of its type {GGMLQuantizationType(qtype).name}")
        return [name, qtype, dims[::-1], offset, math.prod(dims) // block * type_size]

    def placed(self, infos: list[TensorEntry], alignment: int) -> list[TensorEntry]:
        """The tensor table with absolute offsets. As llama.cpp requires, the tensors lie in table order,
        each padded to the alignment, with no gaps: the data is no larger than the tensors it holds."""
        data_start = -(-self.pos // alignment) * alignment
        names: set[str] = set()
        expected = 0
        for name, _, _, offset, nbytes in infos:
            if name in names:
                raise _bad(f"tensor {name} appears twice")
            names.add(name)
            if offset != expected:
                raise _bad(f"tensor {name} is at offset {offset}, not {expected} (tensors follow each other in "
                           f"table order, each padded to {alignment} bytes)")
            if data_start + offset + nbytes > self.size:
                raise _bad(f"the file is truncated (tensor {name} ends past its end)")
            expected = -(-(offset + nbytes) // alignment) * alignment
        return [[name, qtype, shape, data_start + offset, nbytes] for name, qtype, shape, offset, nbytes in infos]


def _offsets(lengths: list[int]) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(np.asarray(lengths, np.int64), out=offsets[1:])
    return offsets


def _alignment(metadata: dict[str, Any]) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1) or value > 1 << 20:
        raise _bad(f"general.alignment must be a power of two up to {1 << 20}, got {value!r}")
    return value
