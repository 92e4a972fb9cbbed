"""Argument checks shared by the host functions: token ranges, counted writes, UTF-8."""

from __future__ import annotations

import numpy as np

from .limits import MAX_I32
from .memory import GuestMemory
from .session import Session
from .status import AbiError, Status


def check_token(s: Session, token: int) -> int:
    if not 0 <= token < s.config.n_vocab:
        raise AbiError(Status.INVALID_ARGUMENT, f"token id {token} out of range 0..{s.config.n_vocab - 1}")
    return token


def check_tokens(s: Session, ids: np.ndarray) -> list[int]:
    if len(ids) and (ids.min() < 0 or ids.max() >= s.config.n_vocab):
        raise AbiError(Status.INVALID_ARGUMENT, f"token ids must be in 0..{s.config.n_vocab - 1}")
    return ids.tolist()


def write_counted(mem: GuestMemory, ptr: int, cap: int, data: bytes) -> int:
    if len(data) > MAX_I32:
        raise AbiError(Status.INVALID_ARGUMENT, "result too large")
    mem.write(ptr, data, cap=cap)
    return len(data)


def decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AbiError(Status.INVALID_ARGUMENT, f"text is not UTF-8: {exc}") from None
