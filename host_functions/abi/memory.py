"""Checked access to a guest's linear memory: the one place where guest addresses are checked."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from host_functions.abi.status import AbiError, Status


class GuestMemory:
    """Checked access to the guest's linear memory for the duration of one host call.

    The memory's address and size are read lazily, once per call: `memory.grow` may move it
    between calls, never during one.
    """

    __slots__ = ("_memory", "_store", "_base", "_size")

    def __init__(self, memory: Any, store: Any) -> None:
        self._memory, self._store = memory, store
        self._base = -1
        self._size = 0

    def span(self, ptr: int, count: int, itemsize: int = 1) -> int:
        """Host address of guest bytes [ptr, ptr + count * itemsize); BAD_POINTER unless all inside memory.

        ptr and count arrive as signed i32, so negative values are rejected here, and the end is
        computed with Python integers, so no sum can wrap around.
        """
        if self._base < 0:
            if self._memory is None:
                raise AbiError(Status.WRONG_STATE, "guest memory is not available yet (called from a start function)")
            self._base = ctypes.addressof(self._memory.data_ptr(self._store).contents)
            self._size = self._memory.data_len(self._store)
        if ptr < 0 or count < 0 or ptr + count * itemsize > self._size:
            raise AbiError(Status.BAD_POINTER,
                           f"({ptr}, {count}) x {itemsize} bytes is outside guest memory of {self._size} bytes")
        return self._base + ptr

    def read(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(self.span(ptr, n), n) if n else b""

    def read_array(self, ptr: int, count: int, dtype: np.dtype | str) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.read(ptr, count * dt.itemsize) if count else b"", dt, count)

    def write(self, ptr: int, data: bytes | np.ndarray, cap: int | None = None) -> int:
        """Copy data (at most `cap` bytes of it) to ptr; returns the bytes written."""
        buf = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
        n = len(buf) if cap is None else min(len(buf), cap)
        if n:
            ctypes.memmove(self.span(ptr, n), buf, n)
        return n
