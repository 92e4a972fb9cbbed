"""Host functions over a step's logits: read them, top-k, samplers and sampling with a bias or mask."""

from __future__ import annotations

import numpy as np

from host_functions.abi.checks import check_token
from host_functions.abi.handles import SamplerState, SeqState
from host_functions.abi.limits import MAX_JSON_BYTES, MAX_JSON_DIGITS, MAX_STOP_BYTES, MAX_STOP_STRINGS
from host_functions.abi.memory import GuestMemory
from host_functions.abi.registry import host
from host_functions.abi.session import Session, TokenLogprob
from host_functions.abi.status import AbiError, BiasMode, Status
from host_functions.constraint import Constraint
from host_functions.engine.sampling import Sampler, SamplingParams
from host_functions.errors import QuotaExceeded, RealmError
from host_functions.formats import json_text

MAX_SAMPLERS = 64  # live samplers per request; a sampler is small, so this only stops runaway loops
MAX_DRAFT_SAMPLES = 16  # draft samples whose distributions a draft sequence keeps for spec_verify
MAX_TOP_LOGPROBS = 20  # alternatives per reported token (OpenAI's top_logprobs maximum)
LOGPROB_BYTES = 128  # host memory of one reported token or alternative (a tuple, an int and a float)

_BIAS_PAIR = np.dtype([("token", "<i4"), ("bias", "<f4")])


@host("seq", "out_ptr", "n")
def logits_read(s: Session, mem: GuestMemory, seq: int, out_ptr: int, n: int) -> int:
    """Copy the first n f32 logits of the last step into guest memory; returns n_vocab."""
    logits = s.handles.get(seq, SeqState).require_logits()
    mem.span(out_ptr, n, 4)
    mem.write(out_ptr, logits[:n].astype("<f4", copy=False))
    return len(logits)


@host("seq", "k", "ids_ptr", "values_ptr")
def logits_topk(s: Session, mem: GuestMemory, seq: int, k: int, ids_ptr: int, values_ptr: int) -> int:
    """The k largest logits, highest first: ids (i32) and values (f32); returns how many were written."""
    logits = s.handles.get(seq, SeqState).require_logits()
    if k <= 0:
        raise AbiError(Status.INVALID_ARGUMENT, f"k must be positive, got {k}")
    k = min(k, len(logits))
    mem.span(ids_ptr, k, 4)
    mem.span(values_ptr, k, 4)
    top = np.argpartition(-logits, k - 1)[:k]
    top = top[np.argsort(-logits[top], kind="stable")]
    mem.write(ids_ptr, top.astype("<i4"))
    mem.write(values_ptr, logits[top].astype("<f4"))
    return k


@host("json_ptr", "json_len", grows=True)
def sampler_new(s: Session, mem: GuestMemory, json_ptr: int, json_len: int) -> int:
    """A sampler from a JSON object of sampling parameters (unknown keys ignored); returns its handle."""
    mem.span(json_ptr, json_len)
    if s.handles.count(SamplerState) >= MAX_SAMPLERS:
        raise QuotaExceeded(f"guest exceeded the limit of {MAX_SAMPLERS} live samplers")
    if json_len > MAX_JSON_BYTES:
        raise AbiError(Status.INVALID_ARGUMENT, f"sampling parameters are {json_len} bytes of JSON, over the "
                                                f"limit of {MAX_JSON_BYTES}")
    s.charge_text(json_len)  # parsing is host work too
    params = sampling_params_from_json(mem.read(json_ptr, json_len))
    return s.handles.add(SamplerState(Sampler(params)))


@host("sampler")
def sampler_free(s: Session, mem: GuestMemory, sampler: int) -> int:
    """Free a sampler."""
    s.handles.remove(sampler, SamplerState)
    return Status.OK


@host("seq", "sampler", "bias_ptr", "bias_len", "mode", grows=True)
def sample(s: Session, mem: GuestMemory, seq: int, sampler: int, bias_ptr: int, bias_len: int, mode: int) -> int:
    """Sample the next token from the last step's logits, biased or masked by the guest; returns the token.

    The sampler's penalties look at the sequence's cached tokens. The token is not appended: the
    guest decides what to feed next.
    """
    state = s.handles.get(seq, SeqState)
    smp = s.handles.get(sampler, SamplerState)
    logits = state.require_logits()
    if bias_len or mode == BiasMode.ALLOW:
        logits = _biased(logits, mem, bias_ptr, bias_len, mode)
    if state.constraint is not None:
        logits = _constrained(logits, state.constraint)
    if not state.records_samples:
        return int(smp.sampler.sample(logits, state.seq.tokens))
    # A draft sequence: verification needs the distribution the draft was drawn from.
    distribution = smp.sampler.distribution(logits, state.seq.tokens)
    token = smp.sampler.draw(*distribution)
    state.record_sample(token, distribution, MAX_DRAFT_SAMPLES)
    return token


@host("seq", "token", "top_k", grows=True)
def token_logprobs(s: Session, mem: GuestMemory, seq: int, token: int, top_k: int) -> int:
    """Report `token`'s log-probability under the last step's logits (before any sampler change),
    with the top_k (0..20) most likely tokens, to the client (OpenAI `logprobs`)."""
    logits = s.handles.get(seq, SeqState).require_logits()
    check_token(s, token)
    if not 0 <= top_k <= MAX_TOP_LOGPROBS:
        raise AbiError(Status.INVALID_ARGUMENT, f"top_k must be 0..{MAX_TOP_LOGPROBS}, got {top_k}")
    if len(s.logprobs) >= s.limits.max_tokens:
        raise AbiError(Status.LIMIT, f"more than {s.limits.max_tokens} tokens' logprobs reported")
    shifted = logits.astype(np.float64) - float(np.max(logits))
    logp = shifted - np.log(np.exp(shifted).sum())
    top = np.argpartition(-logp, top_k)[:top_k] if top_k else np.zeros(0, np.int64)
    top = top[np.argsort(-logp[top], kind="stable")]
    entry = TokenLogprob(token, float(logp[token]), tuple((int(i), float(logp[i])) for i in top))
    s.logprobs.append(entry)
    if s.on_logprob is not None:
        s.on_logprob(entry)
    s.logprob_bytes += LOGPROB_BYTES + LOGPROB_BYTES * top_k  # an entry and each alternative, as Python keeps them
    return Status.OK


def sampling_params_from_json(data: bytes) -> SamplingParams:
    """SamplingParams from the known keys of a JSON object; INVALID_ARGUMENT on bad JSON or values,
    JSON nested too deeply, numbers of more than MAX_JSON_DIGITS digits, NaN/Infinity, or more or
    longer stop strings than MAX_STOP_STRINGS / MAX_STOP_BYTES."""
    try:
        obj = json_text.loads(data, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, nested too deeply
        raise AbiError(Status.INVALID_ARGUMENT, f"sampling parameters are not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise AbiError(Status.INVALID_ARGUMENT, "sampling parameters must be a JSON object")
    try:
        check_stop_strings(obj.get("stop"))
    except RealmError as exc:
        raise AbiError(Status.INVALID_ARGUMENT, str(exc)) from None
    try:
        return SamplingParams.from_fields(obj)
    except (RealmError, TypeError, ValueError) as exc:
        raise AbiError(Status.INVALID_ARGUMENT, f"bad sampling parameters: {exc}") from None


def check_stop_strings(stop: object) -> None:
    """RealmError if a list of stop strings holds more than MAX_STOP_STRINGS, or one of more than
    MAX_STOP_BYTES bytes (UTF-8), what one sampler may hold; anything else is SamplingParams' to judge."""
    # (surrogatepass: JSON may escape a lone surrogate, which is no reason to fail the host call)
    if isinstance(stop, (list, tuple)) and (len(stop) > MAX_STOP_STRINGS or any(
            isinstance(t, str) and len(t.encode("utf-8", "surrogatepass")) > MAX_STOP_BYTES for t in stop)):
        raise RealmError(f"at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_BYTES} bytes each")


def _json_int(text: str) -> int:
    # Python's int() is quadratic in the digits: refuse long numbers before converting them.
    if len(text) > MAX_JSON_DIGITS:
        raise ValueError(f"number of {len(text)} digits (at most {MAX_JSON_DIGITS})")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > MAX_JSON_DIGITS:
        raise ValueError(f"number of {len(text)} characters (at most {MAX_JSON_DIGITS})")
    return float(text)


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _constrained(logits: np.ndarray, constraint: Constraint) -> np.ndarray:
    """The logits with every token the grammar forbids at -inf; INVALID_ARGUMENT if that leaves none."""
    if constraint.refused:
        raise AbiError(Status.WRONG_STATE, f"the sequence ends in {constraint.refused} tokens its constraint refuses: "
                                           "truncate them first")
    out = (logits + constraint.allowed()).astype(np.float32, copy=False)
    if not np.isfinite(out).any():
        raise AbiError(Status.INVALID_ARGUMENT, "the constraint and the bias leave no token to sample")
    return out


def _biased(logits: np.ndarray, mem: GuestMemory, ptr: int, n: int, mode: int) -> np.ndarray:
    n_vocab = len(logits)
    if mode not in (BiasMode.ADD, BiasMode.ALLOW, BiasMode.DENSE):
        raise AbiError(Status.INVALID_ARGUMENT, f"unknown bias mode {mode}")
    dense = mode == BiasMode.DENSE
    mem.span(ptr, n, 4 if dense else _BIAS_PAIR.itemsize)
    if not dense and n > n_vocab:  # more pairs than tokens only repeats ids: refuse before reading them
        raise AbiError(Status.INVALID_ARGUMENT, f"a bias lists at most n_vocab = {n_vocab} tokens, got {n}")
    if dense:
        if n != n_vocab:
            raise AbiError(Status.INVALID_ARGUMENT, f"a dense bias needs n_vocab = {n_vocab} values, got {n}")
        out = logits + mem.read_array(ptr, n, "<f4")
    else:
        pairs = mem.read_array(ptr, n, _BIAS_PAIR)
        ids = pairs["token"].astype(np.int64)
        if n == 0 or ids.min() < 0 or ids.max() >= n_vocab:
            raise AbiError(Status.INVALID_ARGUMENT, f"bias needs 1.. token ids in 0..{n_vocab - 1}")
        # ALLOW starts from all -inf, so only the listed tokens can be drawn (repeated ids: the last wins).
        out = logits.copy() if mode == BiasMode.ADD else np.full_like(logits, -np.inf)
        out[ids] = logits[ids] + pairs["bias"]
    if np.isnan(out).any() or not np.isfinite(out).any() or np.isposinf(out).any():
        raise AbiError(Status.INVALID_ARGUMENT, "bias leaves no finite logit to sample from (or adds NaN/+inf)")
    return out.astype(np.float32, copy=False)
