"""Argument checks shared by the host functions: token ranges (the engine's rule, for this request's
vocabulary), counted writes, UTF-8."""

from __future__ import annotations

import numpy as np

from host_functions.abi.limits import MAX_I32
from host_functions.abi.memory import GuestMemory
from host_functions.abi.session import Session
from host_functions.abi.status import AbiError, Status
from host_functions.engine.step_rules import check_token_id, check_token_ids


def check_token(s: Session, token: int) -> int:
    """`token` if it is in the model's vocabulary; TokenRangeError (INVALID_ARGUMENT) otherwise."""
    return check_token_id(token, s.config.n_vocab)


def check_tokens(s: Session, ids: np.ndarray) -> list[int]:
    """The ids as a list if all are in the vocabulary; TokenRangeError (INVALID_ARGUMENT) otherwise.
    Callers bound len(ids) first: the list is built only after that."""
    check_token_ids(ids, s.config.n_vocab)
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
