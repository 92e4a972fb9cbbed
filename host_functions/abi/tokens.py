"""Host functions about the model and its tokenizer: model_info, tokenize, detokenize, token pieces."""

from __future__ import annotations

import numpy as np

from host_functions.abi.checks import check_token, check_tokens, decode_utf8, write_counted
from host_functions.abi.limits import MAX_DETOKENIZE_IDS, MAX_TOKENIZE_BYTES
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import host
from host_functions.abi.session import Session
from host_functions.abi.status import ABI_VERSION, AbiError, Status, TokenizeFlags

_INFO_FIELDS = ("abi_version", "n_vocab", "n_layers", "n_ctx", "n_embd", "bos_id", "eos_id",
                "max_sequences", "max_tokens", "max_output_bytes")


@host("out_ptr", "out_len")
def model_info(s: Session, mem: GuestMemory, out_ptr: int, out_len: int) -> int:
    """Write the realm_model_info struct (as much of it as fits); returns its full size in bytes."""
    c, tok = s.config, s.tokenizer
    values = (ABI_VERSION, c.n_vocab, c.n_layers, s.n_ctx, c.n_embd, _id_or_none(tok.bos_id),
              _id_or_none(tok.eos_id), s.limits.max_sequences, s.limits.max_tokens, s.limits.max_output_bytes)
    data = np.asarray(values, "<i4").tobytes()
    mem.span(out_ptr, out_len)
    mem.write(out_ptr, data, cap=out_len)
    return len(data)


@host("text_ptr", "text_len", "flags", "out_ptr", "out_cap")
def tokenize(s: Session, mem: GuestMemory, text_ptr: int, text_len: int, flags: int, out_ptr: int,
             out_cap: int) -> int:
    """Token ids of UTF-8 text; writes the first out_cap of them and returns how many there are."""
    if flags & ~(TokenizeFlags.ADD_SPECIAL | TokenizeFlags.PARSE_SPECIAL):
        raise AbiError(Status.INVALID_ARGUMENT, f"unknown tokenize flags {flags:#x}")
    mem.span(out_ptr, out_cap, 4)
    mem.span(text_ptr, text_len)
    if text_len > MAX_TOKENIZE_BYTES:
        raise AbiError(Status.INVALID_ARGUMENT, f"text of {text_len} bytes is over the limit of "
                                                f"{MAX_TOKENIZE_BYTES} bytes for one tokenize call")
    s.charge_text(text_len)
    text = decode_utf8(mem.read(text_ptr, text_len))
    # A long text is host work fuel cannot see: the tokenizer checks the wall clock as it goes.
    ids = s.tokenizer.encode(text, add_bos=None if flags & TokenizeFlags.ADD_SPECIAL else False,
                             parse_special=bool(flags & TokenizeFlags.PARSE_SPECIAL), interrupt=s.check_deadline)
    mem.write(out_ptr, np.asarray(ids[:out_cap], "<i4"))
    return len(ids)


@host("ids_ptr", "n_ids", "out_ptr", "out_cap")
def detokenize(s: Session, mem: GuestMemory, ids_ptr: int, n_ids: int, out_ptr: int, out_cap: int) -> int:
    """UTF-8 text of token ids; writes the first out_cap bytes and returns the full length."""
    mem.span(out_ptr, out_cap)
    mem.span(ids_ptr, n_ids, 4)
    s.charge_text(4 * n_ids)  # a token decodes to a few bytes: bound the work before reading the ids
    if n_ids > MAX_DETOKENIZE_IDS:
        raise AbiError(Status.INVALID_ARGUMENT, f"{n_ids} ids are over the limit of {MAX_DETOKENIZE_IDS} "
                                                "for one detokenize call")
    ids = check_tokens(s, mem.read_array(ids_ptr, n_ids, "<i4"))
    text = s.tokenizer.decode(ids).encode()
    s.charge_text(max(0, len(text) - 4 * n_ids))  # long tokens (whitespace runs) cost what they made
    return write_counted(mem, out_ptr, out_cap, text)


@host("token", "out_ptr", "out_cap")
def token_piece(s: Session, mem: GuestMemory, token: int, out_ptr: int, out_cap: int) -> int:
    """The raw bytes of one token (possibly part of a UTF-8 character); returns their full length."""
    mem.span(out_ptr, out_cap)
    return write_counted(mem, out_ptr, out_cap, s.tokenizer.token_bytes(check_token(s, token)))


@host("token")
def token_is_eog(s: Session, mem: GuestMemory, token: int) -> int:
    """1 if the token ends generation (EOS, end of turn...), else 0."""
    return int(bool(s.tokenizer.is_end_of_generation(check_token(s, token))))


def _id_or_none(token: int | None) -> int:
    return -1 if token is None or token < 0 else int(token)


def info_fields() -> tuple[str, ...]:
    """The i32 fields of realm_model_info, in order (the struct in guest/realm.h)."""
    return _INFO_FIELDS
