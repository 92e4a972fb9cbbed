"""Standard generation on the host, without a guest: the direct path and the speed baseline.

`generate_tokens` yields token ids; `generate_text` turns them into streamed text that honours stop
strings. The reference guest does the same thing through the ABI.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from host_functions.model import Model
from host_functions.sampling import Sampler, SamplingParams, StopMatcher


def generate_tokens(model: Model, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
    """Sample up to params.max_tokens tokens after the prompt; stops before an end-of-generation token."""
    params.validate()
    if not prompt_ids:
        return
    sampler = Sampler(params)
    capacity = min(model.config.context_length, len(prompt_ids) + params.max_tokens)
    seq = model.open_sequence(capacity)
    history = list(prompt_ids)
    try:
        logits = seq.step(history[: capacity])
        for produced in range(min(params.max_tokens, capacity - len(history) + 1)):
            token = sampler.sample(logits, history)
            if model.tokenizer.is_end_of_generation(token):
                return
            yield token
            history.append(token)
            if produced + 1 < params.max_tokens and len(history) <= capacity:
                logits = seq.step([token])
    finally:
        seq.close()


def generate_text(model: Model, prompt: str, params: SamplingParams) -> Iterator[str]:
    """Stream the completion of `prompt` as text pieces, stopping at any of params.stop."""
    decoder = model.tokenizer.stream_decoder()
    stops = StopMatcher(params.stop)
    for token in generate_tokens(model, model.tokenizer.encode(prompt), params):
        text, hit = stops.push(decoder.push(token))
        if text:
            yield text
        if hit:
            return
    tail = stops.flush(decoder.flush())
    if tail:
        yield tail
