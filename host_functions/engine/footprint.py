"""What a loaded model holds in memory, measured: the arrays and GPU buffers reachable from it.

A model's footprint is every NumPy array that owns its memory (a view counts its owner, once) and
every wgpu buffer reachable from the Model through the attributes of Realm's own objects and the
lists, tuples, dicts and sets they hold: the weights as the backend keeps them (the cpu backend's
copy of the GGUF blocks, NumPy's float32 matrices, GPU buffers), the KV pool's storage at its whole
budget (mapped lazily, but it may all be used) and the tokenizer's tables. Arrays that map the model
file are not counted: those are the file's page cache, which the kernel reclaims.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

_OURS = "host_functions."


def retained_bytes(root: object) -> int:
    """Bytes of the memory-owning arrays and GPU buffers reachable from `root` (each counted once)."""
    seen: set[int] = set()
    owners: dict[int, int] = {}
    stack: list[Any] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            owner, size = _owner(obj)
            if owner is not None:
                owners[id(owner)] = size
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif type(obj).__name__ == "GPUBuffer":
            owners[id(obj)] = int(obj.size)
        elif type(obj).__module__.startswith(_OURS):
            stack.extend(_attributes(obj))
    return sum(owners.values())


def _owner(array: np.ndarray) -> tuple[object | None, int]:
    """The object that owns `array`'s memory and its size; None for a map of a file."""
    base: Any = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, np.ndarray):
        return (None, 0) if isinstance(base, np.memmap) else (base, base.nbytes)
    if isinstance(base, mmap.mmap):
        return None, 0
    if isinstance(base, bytes | bytearray):
        return base, len(base)
    return None, 0  # a buffer we cannot size (a ctypes or foreign object): not ours to count


def _attributes(obj: object) -> list[Any]:
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                values.append(getattr(obj, name))
    return values
