"""Open a GGUF file and turn every failure into one clear error.

Everything else sees `GGUFFile`: plain-Python metadata and memory-mapped raw tensors, read by
`gguf_header` once per file and then from an index in Realm's cache. Long metadata arrays (a vocabulary, its scores)
are held compactly: strings as `PackedStrings`, numbers as NumPy arrays of the file's element type,
because as Python objects a large vocabulary costs many times its bytes (docs/engine.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from host_functions import settings
from host_functions.errors import ModelFormatError
from host_functions.formats.gguf_header import HeaderError, read_header
from host_functions.formats.packed_strings import PackedStrings

__all__ = ["GGUFFile", "PackedStrings", "RawTensor"]


@dataclass(frozen=True)
class RawTensor:
    """One tensor exactly as stored: its GGML type, logical shape and memory-mapped bytes.

    `shape` is in NumPy order (rows first): a GGUF matrix with ne = [n_in, n_out] has shape
    (n_out, n_in). `data` is the reader's view: float arrays for F32/F16, uint8 rows of blocks
    for everything else.
    """

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))

    def raw_bytes(self) -> np.ndarray:
        """The tensor's bytes as a flat uint8 array (no copy)."""
        return self.data.reshape(-1).view(np.uint8)


class GGUFFile:
    """A parsed GGUF file: `metadata` (key -> Python value) and `tensors` (name -> RawTensor)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFormatError(f"{self.path}: no such model file")
        index = _load_index(self.path)
        self.metadata: dict[str, Any] = index["metadata"]
        data = np.memmap(self.path, mode="r")
        self.tensors: dict[str, RawTensor] = {}
        for name, qtype, shape, offset, nbytes in index["tensors"]:
            if offset + nbytes > data.size:
                raise ModelFormatError(f"{self.path}: file is truncated (tensor {name} ends past the end of the file)")
            self.tensors[name] = RawTensor(name, GGMLQuantizationType(qtype), tuple(shape),
                                           _tensor_view(data, qtype, tuple(shape), offset, nbytes))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        """A metadata value that must be present."""
        if key not in self.metadata:
            raise ModelFormatError(f"{self.path}: missing metadata key {key}")
        return self.metadata[key]

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> RawTensor:
        """A tensor that must exist, optionally with an exact NumPy-order shape."""
        t = self.tensors.get(name)
        if t is None:
            raise ModelFormatError(f"{self.path}: missing tensor {name}")
        if shape is not None and t.shape != tuple(shape):
            raise ModelFormatError(f"{self.path}: tensor {name} has shape {t.shape}, expected {tuple(shape)}")
        return t


def _load_index(path: Path) -> dict[str, Any]:
    """Metadata and tensor table of a GGUF file, parsed once and then cached.

    Parsing walks every string of the vocabulary (a quarter of a second for 262144 tokens); the index
    is cached by path, size and mtime (an .npz: JSON for the small values, arrays for
    the packed ones) and loads in milliseconds.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    cache = _index_cache_dir() / f"{key}.npz"
    try:
        return _read_index(cache)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing, or torn by a crash: parse again
    index = _parse_index(path)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            _write_index(out, index)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache only costs speed
    return index


def _write_index(out: Any, index: dict[str, Any]) -> None:
    small: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for k, v in index["metadata"].items():
        if isinstance(v, PackedStrings):
            arrays[f"s:{k}:blob"], arrays[f"s:{k}:offsets"] = np.frombuffer(v.blob, np.uint8), v.offsets
        elif isinstance(v, np.ndarray):
            arrays[f"n:{k}"] = v
        else:
            small[k] = v
    head = json.dumps({"metadata": small, "tensors": index["tensors"]}).encode("utf-8")
    # numeric arrays only, read back with allow_pickle=False
    np.savez(out, allow_pickle=False, index=np.frombuffer(head, np.uint8), **arrays)


def _read_index(cache: Path) -> dict[str, Any]:
    with np.load(cache, allow_pickle=False) as z:
        index = json.loads(z["index"].tobytes())
        for name in z.files:
            kind, _, rest = name.partition(":")
            if kind == "n":
                index["metadata"][rest] = z[name]
            elif kind == "s" and rest.endswith(":blob"):
                key = rest[: -len(":blob")]
                index["metadata"][key] = PackedStrings(z[name].tobytes(), z[f"s:{key}:offsets"])
    return index


def _parse_index(path: Path) -> dict[str, Any]:
    try:
        return read_header(path)
    except HeaderError as exc:
        raise ModelFormatError(f"{path}: not a valid GGUF file ({_describe(exc)})") from None
    except (ValueError, OverflowError) as exc:  # an unknown type code, text that is not UTF-8
        raise ModelFormatError(f"{path}: unreadable metadata ({_describe(exc)})") from None


_FLOAT_TYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}


def _tensor_view(data: np.memmap, qtype: int, shape: tuple[int, ...], offset: int, nbytes: int) -> np.ndarray:
    """The same view gguf's reader gives: typed for F32/F16, uint8 rows of blocks otherwise."""
    raw = data[offset : offset + nbytes]
    dtype = _FLOAT_TYPES.get(GGMLQuantizationType(qtype))
    if dtype is not None:
        return raw.view(dtype).reshape(shape)
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return raw.reshape(*shape[:-1], nbytes // rows) if len(shape) > 1 else raw


def _index_cache_dir() -> Path:
    return settings.cache_dir() / "gguf-index"


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "reshape" in text or "divisor" in text or "buffer" in text or "offset" in text:
        return "file is truncated or corrupt: " + text
    return text
