"""Host functions for speculative decoding: every row's logits, row selection, verification, draft models.

A guest drafts k tokens (by prompt lookup in its own code, or with a draft sequence on a draft
model), appends [last token, d_1..d_k] to the target sequence, runs the layers and calls
`seq_finish_all`, which keeps the logits of every one of those tokens host-side. `spec_verify`
checks the drafts against them in one call (host_functions.engine.speculative) and returns how many were
accepted plus the next token; the guest then truncates the rejected tail with `seq_truncate`.

A draft model is opened by name: only names the operator allowed for this request (the Session's
`open_draft`) resolve, so a guest can never make the host open a file of its choosing. A draft must
share the target's vocabulary (checked at open). Its sequences are ordinary sequences: the guest
steps them as usual and samples from them; the host records each draft sample's distribution, so
verification under sampling uses the real q without copying a vocabulary into guest memory.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from host_functions.abi.checks import decode_utf8
from host_functions.abi.handles import SamplerState, SeqState
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import host
from host_functions.abi.sequences import ask_remaining_layers
from host_functions.abi.session import Session
from host_functions.abi.status import AbiError, Status
from host_functions.engine.model import Model
from host_functions.engine.speculative import verify
from host_functions.engine.step_rules import check_step_complete
from host_functions.errors import QuotaExceeded

MAX_LOGIT_ROWS = 17  # rows seq_finish_all keeps: 16 drafts and the token before them (a row is n_vocab f32)
MAX_DRAFT_NAME = 4096
DRAFT_BYTES = 1 << 10  # a DraftState: a reference to a shared model


@dataclass(eq=False)
class DraftState:
    """A draft model this request opened."""

    model: Model

    def host_bytes(self) -> int:
        return DRAFT_BYTES  # the draft model itself is shared, like the target (one copy per process)


@host("seq", grows=True)
def seq_finish_all(s: Session, mem: GuestMemory, seq: int) -> int:
    """Complete the step like seq_finish, keeping the logits of every pending token; returns their number.

    Sampling, top-k and logits_read then use the last row until logits_row selects another.
    """
    state = s.handles.get(seq, SeqState)
    sq = state.seq
    check_step_complete(sq, sq.model.config.n_layers)
    if len(sq.pending) > MAX_LOGIT_ROWS:
        raise AbiError(Status.INVALID_ARGUMENT, f"seq_finish_all keeps at most {MAX_LOGIT_ROWS} rows of logits, "
                                                f"the step has {len(sq.pending)} tokens (use seq_finish)")
    rows = sq.finish(all_positions=True, owner=s.step_owner())
    state.set_rows(rows)
    s.count_step(state)
    return len(rows)


@host("seq", grows=True)
def seq_step_all(s: Session, mem: GuestMemory, seq: int) -> int:
    """seq_step keeping every row (ABI 5): the remaining layers, then seq_finish_all; returns the rows kept."""
    ask_remaining_layers(s, seq)
    return seq_finish_all(s, mem, seq)


@host("seq", "row")
def logits_row(s: Session, mem: GuestMemory, seq: int, row: int) -> int:
    """Make row `row` of the last seq_finish_all the logits that sample, logits_topk and logits_read use."""
    state = s.handles.get(seq, SeqState)
    if state.rows is None:
        raise AbiError(Status.WRONG_STATE, "no rows of logits: call seq_finish_all first")
    if not 0 <= row < len(state.rows):
        raise AbiError(Status.INVALID_ARGUMENT, f"row must be 0..{len(state.rows) - 1}, got {row}")
    state.logits = state.rows[row]
    return Status.OK


@host("seq", "sampler", "draft_seq", "out_ptr")
def spec_verify(s: Session, mem: GuestMemory, seq: int, sampler: int, draft_seq: int, out_ptr: int) -> int:
    """Verify the last seq_finish_all step's tokens after its first against their logits; write the next
    token (i32) to out_ptr and return how many drafts were accepted.

    draft_seq 0: the drafts were chosen deterministically (prompt lookup). Otherwise its last k
    samples must be these drafts, and their distributions are the q of the sampling rule.
    """
    state = s.handles.get(seq, SeqState)
    smp = s.handles.get(sampler, SamplerState)
    mem.span(out_ptr, 1, 4)
    if state.rows is None:
        raise AbiError(Status.WRONG_STATE, "no rows of logits: call seq_finish_all first")
    k = len(state.rows) - 1
    tokens = state.seq.tokens
    drafts, history = tokens[len(tokens) - k:], tokens[:len(tokens) - k]
    rows = state.rows
    if state.constraint is not None:
        rows = _masked_rows(state, rows, [int(t) for t in drafts])
    q = None
    if draft_seq:
        sampled = s.handles.get(draft_seq, SeqState).sampled[-k:] if k else []
        if len(sampled) != k or [t for t, _ in sampled] != drafts:
            raise AbiError(Status.INVALID_ARGUMENT, "the draft sequence's last samples are not the drafts verified")
        q = [dist for _, dist in sampled]
    accepted, following = verify(smp.sampler, rows, drafts, history, q)
    s.steps.verified_steps += 1
    s.steps.drafted += k
    s.steps.accepted += accepted
    mem.write(out_ptr, np.asarray([following], "<i4"))
    return accepted


def _masked_rows(state: SeqState, rows: np.ndarray, drafts: list[int]) -> np.ndarray:
    """The rows up to the first draft the grammar refused, each masked with the grammar's state at its
    position: that draft's own row forbids it, so verification rejects it and never reads a later row."""
    constraint = state.constraint
    assert constraint is not None
    consumed = len(drafts) - constraint.refused
    if consumed < 0 or len(state.seq.tokens) - len(drafts) < state.constrained_from:
        raise AbiError(Status.WRONG_STATE, "the constraint refused the token before the drafts, or was opened "
                                           "after it: the drafts cannot be verified under it")
    masked = rows.copy()
    masked[:consumed + 1] += constraint.masks_along(drafts[:consumed])
    return masked


@host("name_ptr", "name_len")
def draft_open(s: Session, mem: GuestMemory, name_ptr: int, name_len: int) -> int:
    """Open a draft model by a name the request allows (e.g. "draft:PATH", "self:N"); returns its handle."""
    if not 0 <= name_len <= MAX_DRAFT_NAME:
        raise AbiError(Status.INVALID_ARGUMENT, f"a draft name is at most {MAX_DRAFT_NAME} bytes")
    name = decode_utf8(mem.read(name_ptr, name_len))
    model = s.open_draft(name)
    if model is None:
        raise AbiError(Status.INVALID_ARGUMENT, f"draft {name!r} is not allowed for this request")
    if _vocabulary(model) != _vocabulary(s.model):
        raise AbiError(Status.INVALID_ARGUMENT, f"draft {name!r} does not share the target model's vocabulary")
    return s.handles.add(DraftState(model))


@host("draft", "capacity", grows=True)
def draft_seq_open(s: Session, mem: GuestMemory, draft: int, capacity: int) -> int:
    """Open a sequence on a draft model (0 capacity: n_ctx); it counts against max_sequences."""
    model = s.handles.get(draft, DraftState).model
    n_ctx = min(s.n_ctx, model.config.context_length)
    if capacity < 0 or capacity > n_ctx:
        raise AbiError(Status.CAPACITY, f"sequence capacity must be 0..{n_ctx}, got {capacity}")
    if s.handles.count(SeqState) >= s.limits.max_sequences:
        raise QuotaExceeded(f"guest exceeded its limit of {s.limits.max_sequences} live sequences")
    return s.handles.add(SeqState(model.open_sequence(capacity or n_ctx, n_ctx=n_ctx), records_samples=True))


@host("seq")
def seq_layers(s: Session, mem: GuestMemory, seq: int) -> int:
    """The number of layers a step of this sequence runs (its model's, or a draft's)."""
    return s.handles.get(seq, SeqState).seq.model.config.n_layers


_vocab_lock = threading.Lock()
_vocab_digests: weakref.WeakKeyDictionary[Model, str] = weakref.WeakKeyDictionary()


def _vocabulary(model: Model) -> str:
    """A digest of the model's token pieces, in id order (two models share a vocabulary iff equal)."""
    with _vocab_lock:
        if model not in _vocab_digests:
            h = hashlib.sha256()
            tok = model.tokenizer
            for i in range(model.config.n_vocab):
                piece = tok.token_bytes(i)
                h.update(len(piece).to_bytes(4, "little") + piece)
            _vocab_digests[model] = h.hexdigest()
        return _vocab_digests[model]
