"""Open a GGUF file through the `gguf` package and turn every failure into one clear error.

This is the only module that touches `gguf.GGUFReader`; everything else sees `GGUFFile`:
plain-Python metadata and memory-mapped raw tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader

from realm.errors import ModelFormatError


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
        try:
            reader = GGUFReader(self.path)
        except Exception as exc:  # gguf raises ValueError, struct.error, IndexError... on bad bytes
            raise ModelFormatError(f"{self.path}: not a valid GGUF file ({_describe(exc)})") from None
        self.metadata: dict[str, Any] = {}
        for key, field in reader.fields.items():
            try:
                self.metadata[key] = field.contents()
            except Exception as exc:
                raise ModelFormatError(f"{self.path}: unreadable metadata key {key} ({_describe(exc)})") from None
        self.tensors: dict[str, RawTensor] = {
            t.name: RawTensor(
                t.name, GGMLQuantizationType(int(t.tensor_type)),
                tuple(int(n) for n in reversed(t.shape.tolist())), t.data,
            )
            for t in reader.tensors
        }

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


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "reshape" in text or "divisor" in text or "buffer" in text or "offset" in text:
        return "file is truncated or corrupt: " + text
    return text
