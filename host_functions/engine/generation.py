"""Standard generation on the host, without a guest: the direct path and the speed baseline.

`generate_tokens` yields token ids; `generate_text` turns them into streamed text that honours stop
strings. The reference guest does the same thing through the ABI.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from host_functions.engine.model import Model
from host_functions.engine.sampling import Sampler, SamplingParams, StopMatcher
from host_functions.errors import ContextLengthExceeded


def generate_tokens(model: Model, prompt_ids: Sequence[int], params: SamplingParams,
                    n_ctx: int | None = None) -> Iterator[int]:
    """Sample up to params.max_tokens tokens after the prompt.

    Stops before an end-of-generation token, or when the context (n_ctx tokens, at most and by
    default the model's) is full. Raises ContextLengthExceeded, at the first token, if the prompt
    alone does not fit: a prompt is never cut to fit.
    """
    params.validate()
    if not prompt_ids:
        return
    context = model.config.context_length if n_ctx is None else min(n_ctx, model.config.context_length)
    if len(prompt_ids) > context:
        raise ContextLengthExceeded(f"the prompt is {len(prompt_ids)} tokens, longer than the context of {context}")
    sampler = Sampler(params)
    capacity = min(context, len(prompt_ids) + params.max_tokens)
    seq = model.open_sequence(capacity, n_ctx=context)
    history = list(prompt_ids)
    try:
        logits = seq.step(history)
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


def generate_text(model: Model, prompt: str, params: SamplingParams, n_ctx: int | None = None) -> Iterator[str]:
    """Stream the completion of `prompt` as text pieces, stopping at any of params.stop.

    Raises ContextLengthExceeded as generate_tokens does.
    """
    decoder = model.tokenizer.stream_decoder()
    stops = StopMatcher(params.stop)
    for token in generate_tokens(model, model.tokenizer.encode(prompt), params, n_ctx):
        text, hit = stops.push(decoder.push(token))
        if text:
            yield text
        if hit:
            return
    tail = stops.flush(decoder.flush())
    if tail:
        yield tail
