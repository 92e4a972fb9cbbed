"""Host functions for constrained decoding: a grammar bound to a sequence masks its sampling (ABI 5)."""

from __future__ import annotations

from dataclasses import dataclass

from host_functions.abi.handles import SeqState
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import host
from host_functions.abi.session import Session
from host_functions.abi.status import AbiError, Status
from host_functions.constraint import MAX_GRAMMAR_BYTES, Constraint, ConstraintKind, compile_grammar, guidance_tokenizer
from host_functions.errors import QuotaExceeded

CONSTRAINT_BYTES = 256 << 10  # a matcher's parser state and lexer cache, generously, besides its masks
MAX_CONSTRAINTS = 64  # per request, as samplers: each compiles a grammar, so this stops runaway loops


@dataclass(eq=False)
class ConstraintState:
    """A constraint handle (the matcher itself lives on the sequence it is bound to)."""

    constraint: Constraint

    def host_bytes(self) -> int:
        # the bitmask and the float32 additive mask made from it
        return CONSTRAINT_BYTES + self.constraint.bitmask.nbytes + 4 * self.constraint.n_vocab


@host("seq", "kind", "text_ptr", "text_len", grows=True)
def constraint_open(s: Session, mem: GuestMemory, seq: int, kind: int, text_ptr: int, text_len: int) -> int:
    """Bind a constraint of `kind` (JSON_SCHEMA, JSON_OBJECT, REGEX, LARK) from UTF-8 text to a sequence:
    its sampling is masked to what the grammar allows and every token appended from now on advances it.
    Returns the constraint's handle."""
    state = s.handles.get(seq, SeqState)
    mem.span(text_ptr, text_len)
    if kind not in ConstraintKind.__members__.values():
        raise AbiError(Status.INVALID_ARGUMENT, f"unknown constraint kind {kind}")
    if text_len > MAX_GRAMMAR_BYTES:
        raise AbiError(Status.INVALID_ARGUMENT, f"a constraint is at most {MAX_GRAMMAR_BYTES} bytes, got {text_len}")
    if state.constraint is not None:
        raise AbiError(Status.WRONG_STATE, "the sequence already has a constraint")
    if s.handles.count(ConstraintState) >= MAX_CONSTRAINTS:
        raise QuotaExceeded(f"guest exceeded the limit of {MAX_CONSTRAINTS} constraints")
    s.charge_text(text_len)  # compiling is host work that fuel does not see
    try:
        text = mem.read(text_ptr, text_len).decode("utf-8")
    except UnicodeDecodeError:
        raise AbiError(Status.INVALID_ARGUMENT, "constraint text is not UTF-8") from None
    grammar = compile_grammar(ConstraintKind(kind), text)
    constraint = Constraint(guidance_tokenizer(s.tokenizer), grammar)
    state.constraint, state.constrained_from = constraint, len(state.seq.tokens) + len(state.seq.pending)
    return s.handles.add(ConstraintState(constraint))


@host("constraint")
def constraint_done(s: Session, mem: GuestMemory, constraint: int) -> int:
    """1 when the constraint's grammar is complete (nothing but the end may follow), else 0."""
    return int(s.handles.get(constraint, ConstraintState).constraint.complete)
