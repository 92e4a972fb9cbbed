"""Open a GGUF file and turn every failure into one clear error.

Everything else sees `GGUFFile`: plain-Python metadata and memory-mapped raw tensors. The header is
read by formats.gguf_header, which measures every size the file declares before it allocates
(docs/file_checks.md). Long metadata arrays (a vocabulary, its scores) are held compactly: strings as
`PackedStrings`, numbers as NumPy arrays of the file's element type, because as Python objects a large
vocabulary costs many times its bytes (docs/engine.md).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGMLQuantizationType

from host_functions import settings
from host_functions.errors import ModelFormatError
from host_functions.formats import untrusted
from host_functions.formats.gguf_header import read_file_header
from host_functions.formats.packed import PackedStrings

PACKED_MIN = 1024  # metadata arrays at least this long are held packed, not as Python lists


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
        """Read the model file at `path` (memory-mapped), its header within MODEL_LIMITS; raises
        ModelFormatError naming the path."""
        self.path = Path(path)
        try:
            with untrusted.open_file(self.path, follow_links=True) as f:  # an operator's path may be a link
                index = _load_index(self.path, f)
                data = np.memmap(f, mode="r")  # the mapping outlives the descriptor
        except ModelFormatError as exc:
            raise self._error(str(exc)) from None
        except OSError as exc:
            missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)
            raise self._error("no such model file" if missing else untrusted.reason(exc)) from None
        self.metadata: dict[str, Any] = index["metadata"]
        self.tensors: dict[str, RawTensor] = {entry[0]: raw_tensor(data, *entry) for entry in index["tensors"]}

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        """A metadata value that must be present."""
        if key not in self.metadata:
            raise self._error(f"missing metadata key {key}")
        return self.metadata[key]

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> RawTensor:
        """A tensor that must exist, optionally with an exact NumPy-order shape."""
        t = self.tensors.get(name)
        if t is None:
            raise self._error(f"missing tensor {name}")
        if shape is not None and t.shape != tuple(shape):
            raise self._error(f"tensor {name} has shape {t.shape}, expected {tuple(shape)}")
        return t

    def _error(self, detail: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {detail}")


def _load_index(path: Path, f: BinaryIO) -> dict[str, Any]:
    """Metadata and tensor table of a GGUF file, parsed once and then cached.

    Parsing a 262144-token vocabulary still takes a fraction of a second; the index is cached by path,
    size and mtime (an .npz: JSON for the small values, arrays for the packed ones) and loads in
    milliseconds.
    """
    st = os.fstat(f.fileno())  # the file opened, not whatever the path leads to now
    identity = f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    cache = _index_cache_dir() / f"{key}.npz"
    try:
        return _read_index(cache)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing, or torn by a crash: parse again
    index = read_file_header(f, PACKED_MIN)
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


_FLOAT_TYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}


def raw_tensor(data: np.ndarray, name: str, qtype: int, shape: list[int], offset: int, nbytes: int) -> RawTensor:
    """A tensor of the table `read_header` gives, over the file's bytes `data` (uint8, mapped or read),
    viewed as gguf's reader views it: typed for F32/F16, uint8 rows of blocks otherwise."""
    raw = data[offset : offset + nbytes]
    dims = tuple(shape)
    dtype = _FLOAT_TYPES.get(GGMLQuantizationType(qtype))
    if dtype is not None:
        view = raw.view(dtype).reshape(dims)
    else:
        rows = int(np.prod(dims[:-1])) if len(dims) > 1 else 1
        view = raw.reshape(*dims[:-1], nbytes // rows) if len(dims) > 1 else raw
    return RawTensor(name, GGMLQuantizationType(qtype), dims, view)


def _index_cache_dir() -> Path:
    return settings.cache_dir() / "gguf-index"
