"""The HTTP server: an OpenAI-compatible API (Starlette on uvicorn) over tenants' guests.

Every request names its tenant by its API key (`Authorization: Bearer <key>`); it runs in that
tenant's guest (the reference guest if none is deployed) under that tenant's limits, on a worker
thread, and its text streams back as the guest emits it. Errors are OpenAI's JSON error objects;
a guest that traps or hits a limit fails only its own request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from host_functions.engine.model import Model
from host_functions.errors import AdapterError, AuthError, Overloaded, QuotaExceeded, RealmError, RequestCancelled
from host_functions.fair_share import Claim, NeverFits, Refused
from host_functions.lora.adapter import load_adapter
from realm.registry.usage import UsageRecord
from realm.request.sources import for_tenant
from realm.request.spec import RunRequest
from realm.sandbox.intake import reference_guest
from realm.sandbox.report import LOG_ERROR, GuestRunFailed, RunResult
from realm.server import context_limits, embeddings, protocol, streaming
from realm.server.admin import admin_routes, is_admin, require_admin
from realm.server.bodies import bearer_key, parse_json, read_body
from realm.server.connections import reject_ambiguous_framing
from realm.server.cors import cors_middleware
from realm.server.identity import KeyCache
from realm.server.metrics import CONTENT_TYPE, ServerMetrics, engine_stats
from realm.server.model_set import Lease, ModelLoadFailed, ModelNotServed, ModelSet, ModelTooLarge, ServedModel
from realm.server.offloop import OffLoop
from realm.server.protocol import ApiError, ChoiceResult, GenerationSpec
from realm.server.ratelimit import RateLimiter, Reservation, TooLarge
from realm.server.runner import GuestRun, Piece, Runner
from realm.server.streaming import sse as _sse
from realm.tenants import RateLimits, Tenant, TenantRegistry

log = logging.getLogger("realm.server")
T = TypeVar("T")
_DISCONNECT_POLL_S = 0.1


@dataclass(frozen=True)
class ServerConfig:
    """What `realm serve` was told (see docs/serve.md for each)."""

    workers: int = 16  # guest runs at once; the scheduler batches their steps
    max_queue: int = 64  # runs waiting for a worker before new requests get 503
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 0  # 0: the context length
    ctx_size: int = 0  # the context a request's sequences are set up for, at most; 0: the tenant's max_context
    default_max_tokens: int = 256  # chat requests that set no max_tokens
    requests_per_minute: int = 600  # per tenant, unless its registry entry says otherwise; 0 is off
    tokens_per_minute: int = 0  # per tenant (prompt + completion), likewise; 0 is off
    admin_key: str | None = None  # admin endpoints and /metrics; None: they are disabled
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none: CORS is off
    model_wait_s: float = 30.0  # how long a request waits for its model to load (or for room to load it)


class Server:
    """The state every request shares: models, registry, runner, limits, metrics."""

    def __init__(self, models: ModelSet, config: ServerConfig, registry: TenantRegistry | None = None) -> None:
        self.models, self.config = models, config
        self.registry = registry or TenantRegistry()
        self.runner = Runner(config.workers, config.max_queue)
        self.keys = KeyCache(self.registry)
        self.limiter = RateLimiter()
        self.off_loop = OffLoop()
        # Embeddings' model work: threads of their own, so it never holds the ones that read keys and bodies.
        self.embedding_work = OffLoop(config.workers)
        self.shutting_down = False  # set when the drain timeout ends the runs still going
        self.metrics = ServerMetrics()
        self.metrics.watch_engine(lambda: {s.id: engine_stats(s.model) for s in models.loaded()})
        self.metrics.watch_models(models.status)
        self.usage = self.registry.usage_writer(self.metrics.usage_dropped.inc)  # one row per request, off the loop
        self.created = protocol.now()
        reference_guest()  # compiled now, so a missing or broken reference guest stops the start, not a request

    # -- auth ----------------------------------------------------------------------------------

    def tenant(self, request: Request) -> Tenant:
        """The tenant whose key the request carries; ApiError 401 otherwise. May read the registry:
        call it off the event loop."""
        return self._identify(request)[0]

    def _identify(self, request: Request) -> tuple[Tenant, RateLimits]:
        try:
            return self.keys.identify(bearer_key(request))
        except AuthError as exc:
            raise ApiError(401, str(exc), code="invalid_api_key") from None

    async def _identified(self, request: Request) -> tuple[Tenant, RateLimits]:
        """The request's tenant and rate limits: on the loop when its key's answer is remembered
        (identity.KeyCache), else read off the loop; ApiError 401 for a key that is refused."""
        try:
            known = self.keys.known(bearer_key(request))
        except AuthError as exc:
            raise ApiError(401, str(exc), code="invalid_api_key") from None
        return known if known is not None else await self.off_loop.run(self._identify, request)

    def request_limits(self, tenant: Tenant, model: Model) -> protocol.RequestLimits:
        """What one request of `tenant` on `model` may hold, each limit with what sets it (context_limits.py)."""
        return context_limits.request_limits(tenant, model.config.context_length, self.config.ctx_size,
                                             self.config.default_max_tokens, self.config.max_prompt_tokens,
                                             model.config.n_vocab)

    # -- models --------------------------------------------------------------------------------

    def visible(self, tenant: Tenant, model_id: str) -> str:
        """`model_id` if this server serves it and `tenant` may use it; else ApiError 404 model_not_found,
        the same for both, so a tenant never learns which models others use. With one model the message
        names it (as when the server served one model only)."""
        if model_id in self.models and tenant.may_use(model_id):
            return model_id
        mine = [m for m in self.models.ids if tenant.may_use(m)]
        raise _model_not_found(model_id, mine[0] if len(self.models.ids) == 1 and mine else None)

    def _pick(self, tenant: Tenant, data: bytes) -> tuple[Any, str]:
        """The parsed body and the model it names (on a worker thread); ApiError 400 / 404."""
        body = parse_json(data)
        return body, self.visible(tenant, protocol.requested_model(body))

    async def _lease(self, model_id: str, kind: str) -> Lease:
        """A lease on the model, loading it if need be: ApiError 503 overloaded (with Retry-After) when
        it cannot be loaded within the model wait, 507 for a model over the whole --model-memory, 500 for
        one whose file does not load."""
        try:
            lease = await self.models.acquire(model_id, self.config.model_wait_s)
            self.metrics.model_requests.labels(model_id, kind).inc()
            return lease
        except Overloaded as exc:
            raise guest_failure(exc) from None  # 503 overloaded, as a run that waited too long
        except ModelTooLarge as exc:
            raise ApiError(507, str(exc), type="server_error", code="model_too_large") from None
        except ModelLoadFailed as exc:
            raise ApiError(500, f"{exc} (the server's log says why)", type="server_error",
                           code="model_load_failed") from None
        except ModelNotServed:
            raise _model_not_found(model_id) from None

    def check_adapter(self, path: str) -> None:
        """Bind-time check of an adapter file: AdapterError unless it fits one of the served models (an
        adapter is built for one architecture and size; a request on another model gets 400 adapter_error)."""
        error: AdapterError | None = None
        for config in self.models.configs():
            try:
                load_adapter(path, config)
                return
            except AdapterError as exc:
                error = exc
        if error is not None:
            raise error

    # -- generation ----------------------------------------------------------------------------

    async def generate(self, request: Request, kind: str) -> Response:
        """Serve one completion ("completion") or chat ("chat") request; ApiError for refusals.

        In order: the key (401), the request rate (429), the tenant's share of the places (503), the
        body (413), off the event loop its JSON and model (400, 404 for a model the tenant may not use),
        a lease on that model, loaded if need be (503, 507, 500: _lease), then, off the event loop, the
        share again for the body's `n` (503, before any tokenizing), the body's checks, its tokens and
        the tenant's guest (400),
        the token rate (400 for a request that never fits, else 429) and the places for every choice
        (400 when they can never fit, 503 over the tenant's share). Only the body's bytes are read on
        the loop.
        """
        started = time.perf_counter()
        tenant_name, held, lease, model_id = "", None, None, ""
        try:
            tenant, rates = await self._identified(request)
            tenant_name = tenant.name
            self._admit(tenant, rates)
            self._start_runs(tenant, 1, self.runner.check)  # a tenant over its share costs no parsing
            data = await read_body(request, self.config.max_body_bytes)
            body, model_id = await self.off_loop.run_for(tenant.name, self._pick, tenant, data)
            lease = await self._lease(model_id, kind)
            spec, base = await self.off_loop.run_for(tenant.name, self._prepare, tenant, kind, body, lease.served)
            held = self._reserve(tenant, rates, spec.most_tokens())
            self._check_open()
            indexed = list(spec.guest_requests())
            requests = [dataclasses.replace(base, fields=f) for _, f in indexed]
            model = lease.served.model
            started_runs = self._start_runs(tenant, len(requests), lambda c, _: self.runner.start(requests, c, model))
        except BaseException as exc:  # refused before any guest ran: counted here, answered by the handler
            if lease is not None:
                lease.release()
            if isinstance(exc, ApiError):
                if held is not None:
                    self.limiter.settle(held, 0)
                self.finished(tenant_name, kind, exc.status, started, model_id)
            raise
        runs = [(index, run) for (index, _), run in zip(indexed, started_runs, strict=True)]
        call = _Call(self, tenant.name, kind, spec, runs, started, held, lease)
        if spec.stream:
            return StreamingResponse(call.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await call.complete(request)

    async def embeddings(self, request: Request) -> Response:
        """Serve /v1/embeddings (realm/server/embeddings.py): admitted, rate-limited and reserved as a
        completion is, its inputs' tokens reserved; tokenizing and the model's work off the event loop."""
        started, tenant_name, held, status, used, lease, model_id = time.perf_counter(), "", None, 500, 0, None, ""
        try:
            tenant, rates = await self._identified(request)
            tenant_name = tenant.name
            self._admit(tenant, rates)
            data = await read_body(request, self.config.max_body_bytes)
            body, model_id = await self.off_loop.run_for(tenant.name, self._pick, tenant, data)
            lease = await self._lease(model_id, "embedding")
            model = lease.served.model
            limits = self.request_limits(tenant, model)
            spec = await self.off_loop.run_for(tenant.name, lambda: embeddings.parse_embeddings(
                body, model_id, model.tokenizer, limits, model.config.n_embd))
            held = self._reserve(tenant, rates, spec.most_tokens())
            self._check_open()
            owner = embeddings.owner_for(tenant, lambda: self.shutting_down)
            used = spec.most_tokens()  # from here on, what a failed computation used is not known: all of it
            try:
                vectors = await self.embedding_work.run_for(tenant.name, embeddings.embed, model, spec,
                                                            limits.n_ctx, owner)
            except RealmError as exc:
                raise guest_failure(exc) from None
            status = 200
            return JSONResponse(embeddings.response(spec, model_id, vectors))
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            if lease is not None:
                lease.release()
            self.finished(tenant_name, "embedding", status, started, model_id, prompt_tokens=used, held=held)

    def _prepare(self, tenant: Tenant, kind: str, body: Any, served: ServedModel) -> tuple[GenerationSpec, RunRequest]:
        """The checked request and the tenant's guest, adapters and limits for it (on a worker thread)."""
        # A tenant over its share of the places is refused before its prompts are tokenized, for
        # the fewest runs the body asks for: refusals cost every tenant's cores, so they must be cheap.
        self._start_runs(tenant, _choices_at_least(body), self.runner.check)
        limits = self.request_limits(tenant, served.model)
        tok = served.model.tokenizer
        spec = (protocol.parse_chat(body, served.id, tok, served.template, limits) if kind == "chat"
                else protocol.parse_completion(body, served.id, tok, limits))
        base = for_tenant(self.registry, tenant, {})  # its guest and adapters now, for every choice
        # the guest's sequences are set up for the request's context (LongRoPE's factors depend on it)
        base = dataclasses.replace(base, limits=dataclasses.replace(base.limits, max_context=limits.n_ctx))
        lora = spec.guest_fields.get("lora")
        if lora is not None and (not isinstance(lora, str) or lora not in base.adapters):
            raise protocol.bad_request(f"lora: no adapter is bound as {str(lora)[:64]!r} for this tenant", "lora")
        return spec, base

    def _admit(self, tenant: Tenant, rates: RateLimits) -> None:
        """ApiError 429 when the tenant is over its request rate (or its tokens are spoken for); else
        count the request."""
        refused = self.limiter.admit(tenant.name, _rate(rates.requests_per_minute, self.config.requests_per_minute),
                                     _rate(rates.tokens_per_minute, self.config.tokens_per_minute))
        if refused is not None:
            which, wait = refused
            raise _over_rate(tenant.name, which, wait)

    def _reserve(self, tenant: Tenant, rates: RateLimits, tokens: int) -> Reservation:
        """Hold the most tokens the request may use (prompts plus max_tokens for every choice) in the
        tenant's window: 400 when that is more than its per-minute limit, 429 when it does not fit now."""
        limit = _rate(rates.tokens_per_minute, self.config.tokens_per_minute)
        try:
            held = self.limiter.reserve(tenant.name, tokens, limit)
        except TooLarge as exc:
            raise ApiError(400, f"the request may use {exc.tokens} tokens (prompt + max_tokens for each choice), "
                                f"over tenant {tenant.name!r}'s limit of {exc.limit} tokens per minute",
                           type="invalid_request_error", param="max_tokens", code="tokens_per_minute") from None
        if isinstance(held, int):
            raise _over_rate(tenant.name, "tokens", held)
        return held

    def _check_open(self) -> None:
        """ApiError 503 when the server is ending its runs to shut down."""
        if self.shutting_down:
            raise ApiError(503, "the server is shutting down", type="server_error", code="server_shutdown")

    def _start_runs(self, tenant: Tenant, n: int, start: Callable[[Claim, int], T]) -> T:
        """start(claim, n): n runs of the tenant within its share of the places (docs/isolation.md) or
        a check of them; ApiError 400 naming the limit for more runs than it may ever have at once, 503
        with Retry-After while it is over its share (or every place is taken)."""
        claim = Claim(tenant.name, tenant.limits.share_weight, tenant.limits.max_runs)
        try:
            return start(claim, n)
        except NeverFits as exc:
            raise ApiError(400, f"{n} choices: {exc} (max_runs limit, --workers, --max-queue)",
                           type="invalid_request_error", code="tenant_limit") from None
        except Refused as exc:
            raise ApiError(503, f"the server is at capacity for tenant {tenant.name!r}: {exc}; retry shortly",
                           type="server_error", code="overloaded", headers={"Retry-After": "1"}) from None

    def finished(self, tenant: str, kind: str, status: int, started: float, model: str = "",
                 choices: Sequence[ChoiceResult] = (), prompt_tokens: int = 0, held: Reservation | None = None,
                 whole: bool = True) -> None:
        """Account one request of `model` ("" when refused before one was picked): metrics, its usage
        record, and its tokens settled in the tenant's window (what it used; all it reserved when it did
        not finish, since what a cut run used is not known)."""
        completion = sum(c.completion_tokens for c in choices)
        self.metrics.requests.labels(tenant, kind, str(status)).inc()
        self.metrics.latency.labels(tenant, kind).observe(time.perf_counter() - started)
        self.metrics.tokens.labels(tenant, "prompt").inc(prompt_tokens)
        self.metrics.tokens.labels(tenant, "completion").inc(completion)
        if tenant:  # a request refused before its key was known (401) is no tenant's: metrics only
            self.usage.record(UsageRecord(tenant, model, kind, status, prompt_tokens, completion,
                                          sum(c.cached_tokens for c in choices)))
        if held is not None and whole:
            self.limiter.settle(held, prompt_tokens + completion)


def _choices_at_least(body: Any) -> int:
    """The fewest runs a request body asks for: its `n` when that is a valid count, else 1."""
    n = body.get("n") if isinstance(body, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= protocol.MAX_CHOICES else 1


def _rate(own: int | None, default: int) -> int:
    """A tenant's own rate limit, else the server's."""
    return default if own is None else own


def _model_not_found(model_id: str, served: str | None = None) -> ApiError:
    named = f" (this server serves {served!r})" if served else ""
    return ApiError(404, f"the model {model_id[:128]!r} does not exist{named}", code="model_not_found", param="model")


def _over_rate(tenant: str, which: str, wait: int) -> ApiError:
    return ApiError(429, f"tenant {tenant!r} is over its {which}-per-minute limit; retry in {wait} s",
                    type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(wait)})


class _Call:
    """One generation request in flight: its runs and how their outcomes become the response."""

    def __init__(self, server: Server, tenant: str, kind: str, spec: GenerationSpec,
                 runs: list[tuple[int, GuestRun]], started: float, held: Reservation, lease: Lease) -> None:
        self.server, self.tenant, self.kind, self.spec, self.runs = server, tenant, kind, spec, runs
        self.started, self.held, self.lease = started, held, lease
        self.tokenizer = lease.served.model.tokenizer
        self.rid, self.created = protocol.new_id(spec.kind), protocol.now()
        self.first_text: float | None = None
        self.results: list[ChoiceResult] = []
        server.metrics.in_flight.labels(tenant).inc()

    def choice(self, index: int, result: RunResult) -> ChoiceResult:
        """A finished run as a choice: the guest's own report of its tokens and finish reason, or,
        for a guest that reports none, the host's count of prompt and text."""
        tokenizer = self.tokenizer
        counted = self.spec.prompt_tokens[index // self.spec.n]
        prompt = result.prompt_tokens if result.prompt_tokens is not None else counted
        completion = (result.completion_tokens if result.completion_tokens is not None
                      else len(tokenizer.encode(result.text, add_bos=False)))
        # OpenAI knows "stop" and "length"; running out of context is "length" there.
        reason = "stop" if result.finish_reason in (None, "stop") else "length"
        choice = ChoiceResult(index, result.text, reason, prompt, completion, result.logprobs,
                              min(result.steps.cached_tokens, prompt))
        return protocol.with_tool_calls(self.spec, choice)

    def failure(self, exc: Exception) -> ApiError:
        """The client's error for a run that raised `exc`; a run the server's shutdown ended says so."""
        if isinstance(exc, RequestCancelled) and self.server.shutting_down:
            return ApiError(503, "the server is shutting down: this answer is incomplete", type="server_error",
                            code="server_shutdown")
        return guest_failure(exc) if isinstance(exc, RealmError) else _internal(exc)

    def prompt_tokens(self) -> int:
        return protocol.usage(self.spec, self.results)["prompt_tokens"]

    def text_arrived(self) -> None:
        if self.first_text is None:
            self.first_text = time.perf_counter()
            self.server.metrics.ttft.labels(self.tenant, self.kind).observe(self.first_text - self.started)

    def close(self, status: int) -> None:
        for _, run in self.runs:
            run.cancel.set()  # no-op for finished runs; ends abandoned ones at their next host call
        self.lease.release()  # its model may be unloaded once no other request holds it
        self.server.metrics.in_flight.labels(self.tenant).dec()
        self.server.finished(self.tenant, self.kind, status, self.started, self.lease.served.id, self.results,
                             self.prompt_tokens(), self.held, whole=len(self.results) == len(self.runs))

    async def complete(self, request: Request) -> Response:
        """Wait for every choice (cancelling them if the client leaves) and answer in one object."""
        status = 500
        try:
            for index, run in self.runs:
                self.results.append(self.choice(index, await self._result(request, run)))
            self.text_arrived()
            status = 200
            return JSONResponse(protocol.response(self.spec, self.rid, self.created, self.results, self.tokenizer))
        except ApiError as exc:
            status = exc.status
            raise
        except RequestCancelled:
            status = 499  # nginx's "client closed request": nobody is left to answer
            return Response(status_code=499)
        finally:
            self.close(status)

    async def _result(self, request: Request, run: GuestRun) -> RunResult:
        waiting = asyncio.ensure_future(run.result())
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=_DISCONNECT_POLL_S)
            if done:
                try:
                    return waiting.result()
                except RealmError as exc:
                    raise self.failure(exc) from None
            if await request.is_disconnected():
                raise RequestCancelled("the client disconnected")

    async def events(self) -> AsyncIterator[str]:
        """The SSE stream: every choice's text as it comes, a final chunk per choice, [DONE]."""
        spec, logprobs = self.spec, streaming.ChunkLogprobs(self.spec, self.tokenizer)
        queue: asyncio.Queue[streaming.RunEvent] = asyncio.Queue()
        pumps = [asyncio.ensure_future(streaming.pump(index, run, queue)) for index, run in self.runs]
        status, pending = 200, len(self.runs)
        try:
            for index, _ in self.runs:
                yield _sse(protocol.chunk(spec, self.rid, self.created, index, first=True))
            while pending:
                for index, item in streaming.coalesced(await streaming.all_ready(queue)):
                    if isinstance(item, Piece):
                        self.text_arrived()
                        if not spec.tool_mode:  # calls are read whole, at the end
                            yield _sse(protocol.chunk(spec, self.rid, self.created, index, text=item.text,
                                                      logprobs=logprobs.of(index, item.logprobs)))
                        continue
                    pending -= 1
                    if isinstance(item, Exception):
                        error = self.failure(item)
                        status = error.status
                        yield _sse(error.body())
                        return
                    choice = self.choice(index, item)
                    self.results.append(choice)
                    if spec.tool_mode:
                        yield _sse(protocol.chunk(spec, self.rid, self.created, index, calls=choice.tool_calls,
                                                  text=None if choice.tool_calls else choice.text))
                    yield _sse(protocol.chunk(spec, self.rid, self.created, index,
                                              finish_reason=choice.finish_reason, logprobs=logprobs.rest(index, item)))
            if spec.include_usage:
                yield _sse(protocol.usage_chunk(spec, self.rid, self.created, self.results))
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = 499  # the client disconnected: close() below cancels the runs
            raise
        finally:
            for pump in pumps:
                pump.cancel()
            self.close(status)


def guest_failure(exc: RealmError) -> ApiError:
    """The client's error for a run that failed: its limit, its guest's trap or status, or ours."""
    message = str(exc)
    logs = [text for level, text in exc.result.logs if level >= LOG_ERROR] if isinstance(exc, GuestRunFailed) else []
    if logs:
        message += f" (guest log: {logs[-1]})"
    if isinstance(exc, QuotaExceeded):
        return ApiError(400, message, type="limit_exceeded", code="tenant_limit")
    if isinstance(exc, Overloaded):  # other work held what it needed until its deadline: a retry can succeed
        return ApiError(503, message, type="server_error", code="overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, AdapterError):  # one of the tenant's bound adapters, named by its alias
        return ApiError(400, message, type="invalid_request_error", code="adapter_error", param="lora")
    if isinstance(exc, RequestCancelled):
        return ApiError(503, message, type="server_error", code="cancelled")
    return ApiError(500, message, type="guest_error", code="guest_failed")


def _internal(exc: Exception) -> ApiError:
    log.error("request failed: %s: %s", type(exc).__name__, exc)
    return ApiError(500, "internal server error", type="server_error")


# -- the application ------------------------------------------------------------------------------

def create_app(server: Server) -> Starlette:
    """The Starlette application serving `server`."""

    async def completions(request: Request) -> Response:
        return await server.generate(request, "completion")

    async def chat_completions(request: Request) -> Response:
        return await server.generate(request, "chat")

    def model_object(status: dict[str, Any]) -> dict[str, Any]:
        return {"id": status["id"], "object": "model", "created": server.created, "owned_by": "realm",
                "loaded": status["loaded"]}

    async def embeddings_route(request: Request) -> Response:
        return await server.embeddings(request)

    async def models(request: Request) -> Response:
        tenant = await server.off_loop.run(server.tenant, request)
        return JSONResponse({"object": "list", "data": [model_object(s) for s in server.models.status()
                                                        if tenant.may_use(s["id"])]})

    async def model(request: Request) -> Response:
        tenant = await server.off_loop.run(server.tenant, request)
        model_id = server.visible(tenant, request.path_params["model"])
        return JSONResponse(model_object(next(s for s in server.models.status() if s["id"] == model_id)))

    async def health(request: Request) -> Response:
        # Liveness for anyone; what the server is doing only for the admin (in flight, per tenant).
        if not is_admin(request, server.config.admin_key):
            return JSONResponse({"status": "ok"})
        return await admin_health(request)

    async def admin_health(request: Request) -> Response:
        require_admin(request, server.config.admin_key)
        return JSONResponse({"status": "ok", "model": server.models.default, "models": server.models.status(),
                             "in_flight": server.runner.live,
                             "preparing": server.off_loop.pending, "shutting_down": server.shutting_down})

    async def metrics(request: Request) -> Response:
        require_admin(request, server.config.admin_key)
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings_route, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/admin/health", admin_health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *admin_routes(server.registry, server.config.admin_key, server.config.max_body_bytes,
                      server.check_adapter),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, RealmError: _realm_error, Exception: _crash}
    middleware = [Middleware(reject_ambiguous_framing), *cors_middleware(server.config.cors_origins)]
    return Starlette(routes=routes, exception_handlers=handlers,  # type: ignore[arg-type]
                     middleware=middleware)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    error = ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _realm_error(request: Request, exc: RealmError) -> Response:
    # What the checks above did not turn into an ApiError is ours (an unreadable registry or
    # module file), not the client's: its message, which may name files on the host, goes to the log.
    error = _internal(exc)
    return JSONResponse(error.body(), status_code=500)


async def _crash(request: Request, exc: Exception) -> Response:
    error = _internal(exc)
    return JSONResponse(error.body(), status_code=500)
