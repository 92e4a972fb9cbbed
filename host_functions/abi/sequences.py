"""Host functions over sequences: open, fork, append, run layers, finish a step (or run it whole), truncate,
close."""

from __future__ import annotations

from host_functions.abi.checks import check_tokens
from host_functions.abi.handles import SeqState
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import host
from host_functions.abi.session import Session
from host_functions.abi.status import AbiError, Status
from host_functions.engine.step_rules import check_appendable, check_next_layer, check_room, check_step_complete
from host_functions.errors import QuotaExceeded


@host("capacity", grows=True)
def seq_open(s: Session, mem: GuestMemory, capacity: int) -> int:
    """Open a sequence (a KV cache) of `capacity` tokens, 0 for n_ctx; returns its handle."""
    if capacity < 0 or capacity > s.n_ctx:
        raise AbiError(Status.CAPACITY, f"sequence capacity must be 0..{s.n_ctx}, got {capacity}")
    if s.handles.count(SeqState) >= s.limits.max_sequences:
        raise QuotaExceeded(f"guest exceeded its limit of {s.limits.max_sequences} live sequences")
    return s.handles.add(SeqState(s.model.open_sequence(capacity or s.n_ctx, n_ctx=s.n_ctx)))


@host("seq", grows=True)
def seq_fork(s: Session, mem: GuestMemory, seq: int) -> int:
    """A new sequence with `seq`'s tokens, adapter and last logits, sharing its KV blocks (beams,
    best-of-n, tree search: the prefix is computed once); returns its handle."""
    state = s.handles.get(seq, SeqState)
    if state.seq.pending or state.seq.layers_done:
        raise AbiError(Status.WRONG_STATE, "cannot fork a sequence during a step")
    if s.handles.count(SeqState) >= s.limits.max_sequences:
        raise QuotaExceeded(f"guest exceeded its limit of {s.limits.max_sequences} live sequences")
    child = SeqState(state.seq.fork(), records_samples=state.records_samples)
    child.set_logits(state.logits)
    return s.handles.add(child)


@host("seq")
def seq_close(s: Session, mem: GuestMemory, seq: int) -> int:
    """Free a sequence; its handle is dead from now on."""
    s.handles.remove(seq, SeqState).seq.close()
    return Status.OK


@host("seq", "ids_ptr", "n_ids", grows=True)
def seq_append(s: Session, mem: GuestMemory, seq: int, ids_ptr: int, n_ids: int) -> int:
    """Queue tokens for the sequence's next step (prompt, sampled or forced tokens)."""
    state = s.handles.get(seq, SeqState)
    sq = state.seq
    # Every count is checked before a single id is read or converted.
    mem.span(ids_ptr, n_ids, 4)
    check_appendable(sq)
    check_room(sq, n_ids)
    if s.tokens_fed + n_ids > s.limits.max_tokens:
        raise QuotaExceeded(f"guest fed more than its limit of {s.limits.max_tokens} tokens to the model")
    ids = check_tokens(s, mem.read_array(ids_ptr, n_ids, "<i4"))
    s.tokens_fed += len(ids)
    if state.constraint is not None:  # tokens the grammar refuses (drafts) are held until truncated
        state.constraint.consume([int(t) for t in ids])
    sq.append(ids)
    state.set_logits(None)
    return Status.OK


@host("seq", "layer")
def forward_layer(s: Session, mem: GuestMemory, seq: int, layer: int) -> int:
    """Ask for the next transformer layer of the step; the whole step runs at seq_finish."""
    sq = s.handles.get(seq, SeqState).seq
    check_next_layer(sq, layer, sq.model.config.n_layers)
    sq.forward_layer(layer)
    return Status.OK


@host("seq", grows=True)
def seq_finish(s: Session, mem: GuestMemory, seq: int) -> int:
    """Run the step (batched with other sequences' steps by the model's scheduler, waiting for it
    within the request's deadline): commit the pending tokens, keep their last logits host-side."""
    state = s.handles.get(seq, SeqState)
    sq = state.seq
    check_step_complete(sq, sq.model.config.n_layers)
    cached = sq.cached_tokens
    state.set_logits(sq.finish(owner=s.step_owner()))
    s.count_step(state)
    if not state.records_samples:
        s.steps.cached_tokens += sq.cached_tokens - cached
    return Status.OK


def ask_remaining_layers(s: Session, seq: int) -> None:
    """forward_layer for every layer of the step not yet asked for (seq_step, seq_step_all)."""
    sq = s.handles.get(seq, SeqState).seq
    for layer in range(sq.layers_done, sq.model.config.n_layers):
        check_next_layer(sq, layer, sq.model.config.n_layers)
        sq.forward_layer(layer)


@host("seq", grows=True)
def seq_step(s: Session, mem: GuestMemory, seq: int) -> int:
    """Run the step in one call (ABI 5): every layer not yet asked for, then seq_finish; what
    forward_layer for each remaining layer and seq_finish would do, without a host call per layer."""
    ask_remaining_layers(s, seq)
    return seq_finish(s, mem, seq)


@host("seq")
def seq_len(s: Session, mem: GuestMemory, seq: int) -> int:
    """Number of tokens in the sequence's KV cache."""
    return len(s.handles.get(seq, SeqState).seq.tokens)


@host("seq", "n")
def seq_truncate(s: Session, mem: GuestMemory, seq: int, n: int) -> int:
    """Keep the first n cached tokens (backtracking); drops a step in progress and the logits."""
    state = s.handles.get(seq, SeqState)
    if not 0 <= n <= len(state.seq.tokens):
        raise AbiError(Status.INVALID_ARGUMENT, f"cannot truncate {len(state.seq.tokens)} tokens to {n}")
    if state.constraint is not None:  # the matcher forgets the dropped tokens it had consumed
        length = len(state.seq.tokens) + len(state.seq.pending)
        state.constraint.rollback(length - max(n, state.constrained_from))
    state.seq.truncate(n)
    state.set_logits(None)
    return Status.OK
