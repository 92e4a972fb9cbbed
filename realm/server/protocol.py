"""The OpenAI API as Realm speaks it: request bodies checked and turned into guest requests, and
the response, chunk and error objects of /v1/completions and /v1/chat/completions.

Pure functions over dicts: no I/O, no model calls beyond the tokenizer (to count prompt tokens),
so every rule here is tested without a server. Field rules follow the OpenAI API reference;
sampling fields the client leaves out keep the host sampler's (llama.cpp's) defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from host_functions.abi import MAX_TOP_LOGPROBS, TokenLogprob
from host_functions.errors import ChatTemplateError
from host_functions.tokenizer import Tokenizer
from realm.chat import ChatTemplate
from realm.request.fields import RequestFieldError, check_sampling
from realm.server.structured import response_format_constraint
from realm.server.tools import plan_tools, tool_calls

T = TypeVar("T")
MAX_CHOICES = 8  # n: each choice is a full guest run
MAX_STOPS = 4  # OpenAI's limit on stop strings
MAX_COMPLETION_LOGPROBS = 5  # /v1/completions `logprobs` is 0..5
# The OpenAI API's bounds, narrower than the host sampler's ("logit_bias": its values).
API_RANGES = {"temperature": (0.0, 2.0), "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0),
              "logit_bias": (-100.0, 100.0)}

# Fields the server consumes; everything else in a body goes to the guest unchanged.
_SERVER_FIELDS = frozenset({"model", "prompt", "messages", "stream", "stream_options", "n", "user", "echo",
                            "suffix", "best_of", "logprobs", "top_logprobs", "max_completion_tokens",
                            "max_tokens", "stop", "seed", "response_format", "tools", "tool_choice",
                            "parallel_tool_calls", "functions", "function_call"})


class ApiError(Exception):
    """An error answered as OpenAI's `{"error": {...}}` with an HTTP status (and maybe headers)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class GenerationSpec:
    """One checked request: the guest request of each choice and what the response needs."""

    kind: str  # "completion" or "chat"
    model: str
    prompts: tuple[str, ...]  # one per prompt of the body (a chat has one)
    prompt_tokens: tuple[int, ...]  # as the host tokenizer counts them, BOS included
    n: int
    max_tokens: int
    stream: bool
    include_usage: bool
    top_logprobs: int | None  # None: no logprobs asked for
    guest_fields: dict[str, Any] = field(default_factory=dict)  # sampling and extra fields
    tool_mode: str | None = None  # the output is read as tool calls: "required" always, "auto" when it is

    def most_tokens(self) -> int:
        """The most tokens the request may use: each prompt, and max_tokens for every choice."""
        return sum(self.prompt_tokens) + self.max_tokens * self.n * len(self.prompts)

    def guest_requests(self) -> list[tuple[int, dict[str, Any]]]:
        """(choice index, guest request) for every choice: prompts x n, seeds spread over choices."""
        out = []
        for p, prompt in enumerate(self.prompts):
            for i in range(self.n):
                request = {**self.guest_fields, "prompt": prompt, "max_tokens": self.max_tokens}
                if "seed" in request and request["seed"] is not None:
                    request["seed"] = (request["seed"] + i) % 2**64  # n choices with one seed still differ
                if self.top_logprobs is not None:
                    request["logprobs"] = self.top_logprobs
                out.append((p * self.n + i, request))
        return out


@dataclass(frozen=True)
class RequestLimits:
    """What the server accepts in one request."""

    n_ctx: int  # context of one sequence: the model's, capped by the tenant's max_context
    max_request_tokens: int  # the tenant's max_tokens (prompt + completion, per choice)
    default_max_tokens: int  # a chat request that sets no max_tokens
    max_prompt_tokens: int
    n_vocab: int  # token ids a request may name (logit_bias) are 0..n_vocab-1
    # What sets n_ctx and max_request_tokens, and how to raise it, for the errors that name them.
    n_ctx_source: str = "this model's maximum context length"
    request_tokens_source: str = "the tenant's max_tokens limit (prompt + completion)"

    def binding(self) -> tuple[int, str]:
        """The tighter of the context and the tenant's token limit: (tokens, what sets it)."""
        if self.max_request_tokens < self.n_ctx:
            return self.max_request_tokens, self.request_tokens_source
        return self.n_ctx, self.n_ctx_source


def parse_completion(body: Any, model_id: str, tokenizer: Tokenizer, limits: RequestLimits) -> GenerationSpec:
    """Check a /v1/completions body; ApiError (400/404) on anything OpenAI would refuse."""
    body = _object(body)
    _check_model(body, model_id)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        raise bad_request("token-id prompts are not supported: send text", "prompt")
    else:
        raise bad_request("prompt must be a string or a non-empty list of strings", "prompt")
    for name in ("echo", "suffix"):
        if body.get(name) not in (None, False, ""):
            raise bad_request(f"{name} is not supported", name)
    logprobs = body.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS):
        raise bad_request(f"logprobs must be an integer 0..{MAX_COMPLETION_LOGPROBS} or null", "logprobs")
    if body.get("tools") is not None or body.get("tool_choice") is not None:
        raise bad_request("tools are for /v1/chat/completions", "tools")
    constraint = _constraint(lambda: response_format_constraint(body.get("response_format")))
    counts = tuple(count_tokens(tokenizer, p, limits.max_prompt_tokens, "prompt") for p in prompts)
    spec = _spec("completion", body, model_id, prompts, counts, logprobs, limits, default_max_tokens=16)
    return _constrained(spec, constraint)


def parse_chat(body: Any, model_id: str, tokenizer: Tokenizer, template: ChatTemplate,
               limits: RequestLimits) -> GenerationSpec:
    """Check a /v1/chat/completions body and render its messages with the chat template."""
    body = _object(body)
    _check_model(body, model_id)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    plan = _constraint(lambda: plan_tools(body, [_flatten_content(i, m) for i, m in enumerate(messages)], template))
    constraint = plan.constraint or _constraint(lambda: response_format_constraint(body.get("response_format")))
    try:
        prompt = template.render(plan.messages, tools=plan.tools)
    except ChatTemplateError as exc:
        raise bad_request(str(exc), "messages") from None
    top: int | None = None
    if body.get("logprobs") not in (None, False):
        if body.get("logprobs") is not True:
            raise bad_request("logprobs must be a boolean", "logprobs")
        top = body.get("top_logprobs") if body.get("top_logprobs") is not None else 0
        if not _is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad_request(f"top_logprobs must be an integer 0..{MAX_TOP_LOGPROBS}", "top_logprobs")
    elif body.get("top_logprobs") is not None:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    count = count_tokens(tokenizer, prompt, limits.max_prompt_tokens, "messages", parse_special=True)
    spec = _spec("chat", body, model_id, (prompt,), (count,), top, limits, limits.default_max_tokens)
    # The rendered turn markers are special tokens, not text.
    spec = dataclasses.replace(spec, guest_fields={**spec.guest_fields, "special": True}, tool_mode=plan.tool_mode)
    return _constrained(spec, constraint)


def _constraint(plan: Callable[[], T]) -> T:
    """`plan()`, its RequestFieldError (response_format, tools) the client's 400 naming the field."""
    try:
        return plan()
    except RequestFieldError as exc:
        raise bad_request(str(exc), exc.field) from None


def _constrained(spec: GenerationSpec, constraint: dict[str, str] | None) -> GenerationSpec:
    """The spec whose guest requests carry `constraint` (the reference guest's "constraint" field)."""
    if constraint is None:
        return spec
    return dataclasses.replace(spec, guest_fields={**spec.guest_fields, "constraint": constraint})


def count_tokens(tokenizer: Tokenizer, text: str, limit: int, param: str, parse_special: bool = False) -> int:
    """The tokens of `text`, BOS included; ApiError 400 (prompt_too_long) without tokenizing when the
    text has more bytes than `limit` tokens could cover (tokenizing is the client's time: a 1 MiB
    prompt takes seconds, to find it too long)."""
    size = len(text.encode("utf-8"))
    # A token covers at most max_token_bytes of text; twice that allows for any normalizing.
    if size > limit and size > 2 * limit * max_token_bytes(tokenizer):
        raise bad_request(f"the prompt is {size} bytes, more than {limit} tokens (this server's limit) can hold",
                          param, "prompt_too_long")
    return len(tokenizer.encode(text, parse_special=parse_special))


@functools.lru_cache(maxsize=4)
def max_token_bytes(tokenizer: Tokenizer) -> int:
    """The most bytes of text one token of `tokenizer` stands for (its text, or its spelling for a
    special token that parse_special matches); a walk over the vocabulary, once per tokenizer."""
    return max(max(len(tokenizer.piece(i).encode()), len(tokenizer.token_bytes(i)))
               for i in range(tokenizer.vocab_size))


def _spec(kind: str, body: dict[str, Any], model_id: str, prompts: tuple[str, ...], counts: tuple[int, ...],
          top_logprobs: int | None, limits: RequestLimits, default_max_tokens: int) -> GenerationSpec:
    n = body.get("n", 1) if body.get("n") is not None else 1
    if not _is_int(n) or not 1 <= n <= MAX_CHOICES:
        raise bad_request(f"n must be an integer 1..{MAX_CHOICES}", "n")
    longest = max(counts)
    context, source = limits.binding()
    prompt_param = "prompt" if kind == "completion" else "messages"
    if longest >= context:
        raise bad_request(f"the prompt has {longest} tokens, leaving no room for an answer in the {context} of "
                          f"{source}", prompt_param, "context_length_exceeded")
    if longest > limits.max_prompt_tokens:
        raise bad_request(f"the prompt is {longest} tokens, over this server's limit of {limits.max_prompt_tokens} "
                          "(--max-prompt-tokens)", prompt_param, "prompt_too_long")
    room = context - longest
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = max(1, min(default_max_tokens, room))
    if not _is_int(max_tokens) or max_tokens < 1:
        raise bad_request("max_tokens must be a positive integer", "max_tokens")
    if max_tokens > room:
        raise bad_request(f"the prompt has {longest} tokens and max_tokens asks for {max_tokens} more, over the "
                          f"{context} of {source}", "max_tokens", "context_length_exceeded")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    fields = {k: v for k, v in body.items() if k not in _SERVER_FIELDS and v is not None}
    fields.update(_stop_and_seed(body))
    _check_bias_ids(fields.get("logit_bias"), limits.n_vocab)
    try:
        check_sampling(fields, API_RANGES)  # a bad value is the client's 400, not a failed guest run
    except RequestFieldError as exc:
        raise bad_request(str(exc), exc.field) from None
    _check_speculative(fields.get("speculative"))
    return GenerationSpec(kind, model_id, prompts, counts, n, max_tokens, stream,
                          bool(options.get("include_usage")), top_logprobs, fields)


def _check_bias_ids(bias: Any, n_vocab: int) -> None:
    """400 for a logit_bias key that is not a token id of this model (a guest would fail on it)."""
    for key in bias if isinstance(bias, dict) else ():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias keys must be token ids, got {key[:32]!r}", "logit_bias") from None
        if not 0 <= token < n_vocab:
            raise bad_request(f"logit_bias: token id {token} is outside this model's vocabulary (0..{n_vocab - 1})",
                              "logit_bias")


def _check_speculative(value: Any) -> None:
    """400 unless "speculative" is absent, ngram or self:N (N in ASCII digits): no tenant may name a
    draft file (a host path), and a malformed name is the client's error, not its guest run's."""
    kind, _, arg = value.partition(":") if isinstance(value, str) else ("", "", "")
    if value is not None and value != "ngram" and not (kind == "self" and arg.isascii() and arg.isdigit()):
        raise bad_request(f"speculative must be ngram or self:N (N a number of layers), got {value!r}", "speculative")


def _stop_and_seed(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop):
            raise bad_request(f"stop must be a non-empty string or a list of at most {MAX_STOPS}", "stop")
        if stop:
            out["stop"] = stop
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise bad_request("seed must be an integer", "seed")
        out["seed"] = seed % 2**64  # OpenAI seeds may be negative; the sampler's are unsigned
    return out


def _flatten_content(index: int, message: Any) -> Any:
    """A message whose content is a list of text parts, as one string (other parts are refused)."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    texts = []
    for part in message["content"]:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"messages[{index}].content: only text parts are supported", "messages")
        texts.append(part["text"])
    return {**message, "content": "".join(texts)}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _check_model(body: dict[str, Any], model_id: str) -> None:
    check_model_id(requested_model(body), model_id)


def requested_model(body: Any) -> str:
    """The model a request body names; ApiError 400 when the body is not an object or names none."""
    model = _object(body).get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required", "model")
    return model


def check_model_id(model: str, model_id: str) -> None:
    """ApiError 404 model_not_found unless `model` is the served model's id."""
    if model != model_id:
        raise ApiError(404, f"the model {model[:128]!r} does not exist (this server serves {model_id!r})",
                       code="model_not_found", param="model")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- responses ---------------------------------------------------------------------------------

@dataclass
class ChoiceResult:
    """What one choice produced, as the response needs it."""

    index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: Sequence[TokenLogprob] = ()
    cached_tokens: int = 0  # prompt positions taken from the tenant's prefix cache
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's tool_calls, when the text held calls


def with_tool_calls(spec: GenerationSpec, choice: ChoiceResult) -> ChoiceResult:
    """The choice with the tool calls its text holds, if the request had tools: finish_reason "tool_calls",
    or "length" when max_tokens cut the calls short (the complete ones are kept)."""
    calls = tool_calls(choice.text, spec.tool_mode)
    if not calls:
        return choice
    return dataclasses.replace(choice, tool_calls=calls,
                               finish_reason="tool_calls" if choice.finish_reason == "stop" else choice.finish_reason)


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(spec: GenerationSpec, choices: Sequence[ChoiceResult]) -> dict[str, Any]:
    """OpenAI usage: each prompt counted once (by its first choice), every choice's completion tokens,
    and in prompt_tokens_details the prompt tokens its first choice took from the prefix cache."""
    completion = sum(c.completion_tokens for c in choices)
    prompt = sum(c.prompt_tokens for c in choices if c.index % spec.n == 0)
    cached = sum(c.cached_tokens for c in choices if c.index % spec.n == 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def response(spec: GenerationSpec, rid: str, created: int, choices: Sequence[ChoiceResult],
             tokenizer: Tokenizer) -> dict[str, Any]:
    """The whole (non-streamed) response object."""
    return {"id": rid, "object": "chat.completion" if spec.kind == "chat" else "text_completion",
            "created": created, "model": spec.model,
            "choices": [_choice(spec, c, tokenizer) for c in sorted(choices, key=lambda c: c.index)],
            "usage": usage(spec, choices), "system_fingerprint": None}


def _choice(spec: GenerationSpec, c: ChoiceResult, tokenizer: Tokenizer) -> dict[str, Any]:
    logprobs = format_logprobs(spec, c.logprobs, tokenizer) if spec.top_logprobs is not None else None
    if spec.kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": None if c.tool_calls else c.text}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        return {"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": c.finish_reason}
    return {"index": c.index, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish_reason}


def chunk(spec: GenerationSpec, rid: str, created: int, index: int, text: str | None = None,
          finish_reason: str | None = None, logprobs: dict[str, Any] | None = None,
          first: bool = False, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One streamed chunk: a piece of choice `index`'s text or its tool calls, or its end (finish_reason)."""
    if spec.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        if calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": spec.model,
                "system_fingerprint": None, "choices": [choice]}
    choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
    return {"id": rid, "object": "text_completion", "created": created, "model": spec.model, "choices": [choice]}


def usage_chunk(spec: GenerationSpec, rid: str, created: int, choices: Sequence[ChoiceResult]) -> dict[str, Any]:
    """The last chunk when stream_options.include_usage is set: no choices, only usage."""
    kind = "chat.completion.chunk" if spec.kind == "chat" else "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": spec.model, "choices": [],
            "usage": usage(spec, choices)}


def format_logprobs(spec: GenerationSpec, entries: Sequence[TokenLogprob], tokenizer: Tokenizer,
                    offset: int = 0) -> dict[str, Any]:
    """OpenAI's logprobs object: chat's `content` list, or completions' parallel lists (text offsets
    from `offset`, where the entries' text starts in the choice's)."""
    def piece(token: int) -> tuple[str, list[int]]:
        raw = tokenizer.token_bytes(token)
        return raw.decode("utf-8", "replace"), list(raw)

    if spec.kind == "chat":
        content = []
        for e in entries:
            text, raw = piece(e.token)
            top = [{"token": piece(t)[0], "logprob": lp, "bytes": piece(t)[1]} for t, lp in e.top]
            content.append({"token": text, "logprob": e.logprob, "bytes": raw, "top_logprobs": top})
        return {"content": content, "refusal": None}
    tokens, offsets = [], []
    for e in entries:
        text = piece(e.token)[0]
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{piece(t)[0]: lp for t, lp in e.top} for e in entries], "text_offset": offsets}


def now() -> int:
    return int(time.time())
