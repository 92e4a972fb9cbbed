"""/v1/embeddings: each input's hidden states pooled into one unit vector, as llama.cpp's server does.

Pooling: the mean over every position of the final hidden state after the output norm (BOS
included), then Euclidean normalization: llama.cpp's `llama-server --embeddings --pooling mean`
with its default `--embd-normalize 2`. A causal LM such as Gemma 3 declares no pooling type in its
GGUF file (llama.cpp's default is then none, which its /v1/embeddings refuses), so a pooling has to
be chosen: mean uses every token's state, where last would rest on one. tests/data/*.embeddings.json
hold llama.cpp's own vectors for these inputs.

Inputs are a string, a list of strings, a list of token ids or a list of such lists (OpenAI's
forms), at most MAX_INPUTS of them, each within the request's context and all together within the
tenant's max_tokens limit. The hidden states run through the model's scheduler (batched with every
other request's steps, under the tenant's share), on a thread off the event loop.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from host_functions.engine.model import Model
from host_functions.engine.scheduler import StepOwner
from host_functions.tokenizer import Tokenizer
from realm.server.protocol import RequestLimits, bad_request, check_model_id, count_tokens, requested_model
from realm.tenants import Tenant

MAX_INPUTS = 256  # inputs of one request (OpenAI allows 2048; each is a prefill here)
ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingSpec:
    """A checked /v1/embeddings request: each input's tokens and how to send the vectors."""

    inputs: tuple[tuple[int, ...], ...]
    encoding: str  # "float" or "base64" (little-endian float32, as OpenAI's)

    def most_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.inputs)


def parse_embeddings(body: Any, model_id: str, tokenizer: Tokenizer, limits: RequestLimits,
                     n_embd: int) -> EmbeddingSpec:
    """Check a /v1/embeddings body and tokenize its inputs; ApiError 400 (404 for another model)."""
    check_model_id(requested_model(body), model_id)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise bad_request(f"encoding_format must be one of {', '.join(ENCODINGS)}", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != n_embd:
        raise bad_request(f"dimensions: this model's embeddings have {n_embd} dimensions, and no other number "
                          "is supported", "dimensions")
    inputs = tuple(_tokens(item, tokenizer, limits) for item in _inputs(body.get("input")))
    total = sum(len(tokens) for tokens in inputs)
    if total > limits.max_request_tokens:
        raise bad_request(f"the inputs have {total} tokens in all, over the {limits.max_request_tokens} of "
                          f"{limits.request_tokens_source}", "input", "context_length_exceeded")
    return EmbeddingSpec(inputs, encoding)


def _inputs(value: Any) -> list[str | list[int]]:
    """The body's `input` as a list of strings and token-id lists."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(_is_id(t) for t in value)):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) or (isinstance(v, list) and all(
            _is_id(t) for t in v)) for v in value):
        if len(value) > MAX_INPUTS:
            raise bad_request(f"input: at most {MAX_INPUTS} inputs in one request, got {len(value)}", "input")
        return value
    raise bad_request("input must be a string, a list of strings, a list of token ids or a list of such lists",
                      "input")


def _tokens(item: str | list[int], tokenizer: Tokenizer, limits: RequestLimits) -> tuple[int, ...]:
    """One input's tokens (BOS added to text, as the completions' prompts), checked against the context
    and the vocabulary."""
    if isinstance(item, str):
        if not item:
            raise bad_request("input: an empty string has no embedding", "input")
        count_tokens(tokenizer, item, limits.n_ctx, "input")  # refuses what cannot fit before tokenizing
        tokens = tuple(tokenizer.encode(item))
    else:
        tokens = tuple(item)
        if not tokens:
            raise bad_request("input: an empty list of tokens has no embedding", "input")
        bad = next((t for t in tokens if not 0 <= t < limits.n_vocab), None)
        if bad is not None:
            raise bad_request(f"input: token id {bad} is outside this model's vocabulary (0..{limits.n_vocab - 1})",
                              "input")
    if len(tokens) > limits.n_ctx:
        raise bad_request(f"an input has {len(tokens)} tokens, over the {limits.n_ctx} of {limits.n_ctx_source}",
                          "input", "context_length_exceeded")
    return tokens


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def embed(model: Model, spec: EmbeddingSpec, n_ctx: int, owner: StepOwner) -> list[np.ndarray]:
    """Each input's pooled, normalized embedding (float32, n_embd), its steps run for `owner` (its
    tenant's share, deadline and stop condition) in sequences set up for n_ctx positions. Call off the
    event loop; raises what the scheduler raises (RequestCancelled, QuotaExceeded)."""
    return [pool(model.hidden_states(tokens, owner, n_ctx=n_ctx)) for tokens in spec.inputs]


def owner_for(tenant: Tenant, should_stop: Callable[[], bool]) -> StepOwner:
    """The scheduler's owner of a tenant's embedding steps: its share, KV cap and wall-clock limit."""
    return StepOwner(tenant.name, time.monotonic() + tenant.limits.wall_seconds, should_stop,
                     tenant.limits.share_weight, tenant.limits.kv_blocks)


def pool(states: np.ndarray) -> np.ndarray:
    """The mean of the rows, scaled to unit Euclidean length (llama.cpp's --embd-normalize 2)."""
    mean = states.astype(np.float64).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)


def response(spec: EmbeddingSpec, model_id: str, vectors: Sequence[np.ndarray]) -> dict[str, Any]:
    """OpenAI's embeddings list object."""
    data = [{"object": "embedding", "index": i, "embedding": _encoded(v, spec.encoding)} for i, v in enumerate(vectors)]
    tokens = spec.most_tokens()
    return {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]

