"""Admin endpoints: the tenant registry over HTTP, mirroring `realm tenant ...`; every one needs
the admin key (`Authorization: Bearer <admin key>`).

    GET    /admin/tenants                       list
    POST   /admin/tenants                       create   {"name": ..., "limits": {...}}
    GET    /admin/tenants/{name}                show
    DELETE /admin/tenants/{name}                delete
    PATCH  /admin/tenants/{name}/limits         set-limits {"share_weight": 2, "max_runs": 8, ...}
    PUT    /admin/tenants/{name}/guest          deploy   (body: the .wasm or .wat module)
    POST   /admin/tenants/{name}/keys           key create (the key is in the answer, only there)
    GET    /admin/tenants/{name}/keys           key list
    DELETE /admin/tenants/{name}/keys/{key_id}  key revoke
    GET    /admin/tenants/{name}/rate-limits    rate-limit (show)
    PUT    /admin/tenants/{name}/rate-limits    rate-limit {"requests_per_minute": .., "tokens_per_minute": ..}
    GET    /admin/tenants/{name}/usage          usage (?since=AGE|DATE): totals and per model

A registry that cannot be reached is the server's fault, not the request's: 500, its reason logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from host_functions.errors import AdapterError, AuthError, GuestError, TenantError
from realm.registry.usage import parse_since
from realm.sandbox.intake import MAX_MODULE_BYTES
from realm.server.bodies import bearer_key, read_body, read_json
from realm.server.protocol import ApiError
from realm.tenants import RateLimits, TenantRegistry, parse_limits


def require_admin(request: Request, admin_key: str | None) -> None:
    """ApiError 403 when the server has no admin key, 401 unless the request carries it."""
    if admin_key is None:
        raise ApiError(403, "admin endpoints are disabled: start the server with --admin-key-file "
                            "or REALM_ADMIN_KEY", type="permission_error")
    try:
        given = bearer_key(request)
    except AuthError as exc:
        raise ApiError(401, str(exc), code="invalid_api_key") from None
    if not hmac.compare_digest(given.encode(), admin_key.encode()):
        raise ApiError(401, "invalid admin key", code="invalid_api_key")


def is_admin(request: Request, admin_key: str | None) -> bool:
    """Whether the request carries the admin key (False when the server has none)."""
    try:
        require_admin(request, admin_key)
    except ApiError:
        return False
    return True


def admin_routes(registry: TenantRegistry, admin_key: str | None, max_body_bytes: int,
                 check_adapter: Callable[[str], object] = lambda path: None) -> list[Route]:
    """The admin routes over `registry`, each open only to `admin_key`; JSON bodies up to max_body_bytes.
    An adapter is bound only once `check_adapter(path)` (loading it for the served models) raised no
    AdapterError, so one no request could load is refused here (400), not in every request naming it.

    Each handler runs on a worker thread (the registry is a database; binding an adapter reads
    its header, deploying compiles), given the path's parameters and the body read on the loop."""

    def admin(handler: Callable[[dict[str, Any], Any], Any], status: int = 200,
              body: str | None = None) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            require_admin(request, admin_key)
            data: Any = None
            if body == "json":
                data = await read_json(request, max_body_bytes)
            elif body == "module":
                data = await read_body(request, MAX_MODULE_BYTES)
            elif body == "query":
                data = dict(request.query_params)
            try:
                return JSONResponse(await run_in_threadpool(handler, dict(request.path_params), data),
                                    status_code=status)
            except TenantError as exc:
                raise ApiError(_status_of(request), str(exc)) from None
            except GuestError as exc:
                raise ApiError(400, str(exc), code="invalid_module") from None
            except AdapterError as exc:
                raise ApiError(400, str(exc), code="invalid_adapter") from None
        return endpoint

    def list_tenants(path: dict[str, Any], body: Any) -> Any:
        return {"data": [t.as_json() for t in registry.list()]}

    def create_tenant(path: dict[str, Any], body: Any) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ApiError(400, 'the body must be {"name": ..., "limits": {...}, "models": [...]}')
        limits = body.get("limits") or {}
        if not isinstance(limits, dict):
            raise ApiError(400, "limits must be an object of limit name -> number")
        return registry.create(body["name"], parse_limits({k: str(v) for k, v in limits.items()}),
                               _model_list(body.get("models"))).as_json()

    def set_models(path: dict[str, Any], body: Any) -> Any:
        if not isinstance(body, dict) or set(body) != {"models"}:
            raise ApiError(400, 'the body must be {"models": [MODEL, ...]} (an empty list: every model)')
        registry.get(path["name"])  # 404 for an unknown tenant; a bad id is a 400 below
        try:
            return registry.set_models(path["name"], _model_list(body["models"])).as_json()
        except TenantError as exc:
            raise ApiError(400, str(exc)) from None

    def set_limits(path: dict[str, Any], body: Any) -> Any:
        if not isinstance(body, dict) or not body:
            raise ApiError(400, "the body must be an object of limit name -> number")
        registry.get(path["name"])  # 404 for an unknown tenant; a bad value is a 400 below
        try:
            return registry.set_limits(path["name"], {k: str(v) for k, v in body.items()}).as_json()
        except TenantError as exc:
            raise ApiError(400, str(exc)) from None

    def show_tenant(path: dict[str, Any], body: Any) -> Any:
        return registry.get(path["name"]).as_json()

    def delete_tenant(path: dict[str, Any], body: Any) -> Any:
        registry.delete(path["name"])
        return {"deleted": path["name"]}

    def deploy(path: dict[str, Any], body: Any) -> Any:
        return registry.deploy(path["name"], body).as_json()

    def create_key(path: dict[str, Any], body: Any) -> Any:
        record, key = registry.create_key(path["name"])
        return {**record.as_json(), "key": key}

    def list_keys(path: dict[str, Any], body: Any) -> Any:
        return {"data": [k.as_json() for k in registry.list_keys(path["name"])]}

    def revoke_key(path: dict[str, Any], body: Any) -> Any:
        return registry.revoke_key(path["name"], path["key_id"]).as_json()

    def show_rates(path: dict[str, Any], body: Any) -> Any:
        registry.get(path["name"])
        return registry.rate_limits(path["name"]).as_json()

    def set_rates(path: dict[str, Any], body: Any) -> Any:
        names = set(RateLimits().as_json())
        if not isinstance(body, dict) or not set(body) <= names:
            raise ApiError(400, f"the body must be an object with {' and/or '.join(sorted(names))}")
        return registry.set_rate_limits(path["name"], RateLimits(**body)).as_json()

    def usage(path: dict[str, Any], query: dict[str, str]) -> Any:
        if not set(query) <= {"since"}:
            raise ApiError(400, "the only query parameter is since (an age such as 12h, or an ISO date)")
        try:
            since = parse_since(query["since"]) if "since" in query else None
        except TenantError as exc:
            raise ApiError(400, str(exc)) from None
        return registry.usage(path["name"], since)

    def list_adapters(path: dict[str, Any], body: Any) -> Any:
        bound = registry.adapters(path["name"])
        return {"data": [{"alias": alias, "path": b.path, "scale": b.scale} for alias, b in bound.items()]}

    def bind_adapter(path: dict[str, Any], body: Any) -> Any:
        scale = body.get("scale", 1.0) if isinstance(body, dict) else None
        if (not isinstance(body, dict) or not isinstance(body.get("path"), str) or "\0" in body["path"]
                or isinstance(scale, bool) or not isinstance(scale, (int, float))):
            raise ApiError(400, 'the body must be {"path": FILE, "scale": number}')
        registry.get(path["name"])
        check_adapter(body["path"])
        binding = registry.set_lora(path["name"], body["path"], float(scale), path["alias"])
        return {"alias": path["alias"], "path": binding.path, "scale": binding.scale}

    def unbind_adapter(path: dict[str, Any], body: Any) -> Any:
        return {"unbound": registry.unset_lora(path["name"], path["alias"])}

    return [
        Route("/admin/tenants", admin(list_tenants), methods=["GET"]),
        Route("/admin/tenants", admin(create_tenant, 201, "json"), methods=["POST"]),
        Route("/admin/tenants/{name}", admin(show_tenant), methods=["GET"]),
        Route("/admin/tenants/{name}", admin(delete_tenant), methods=["DELETE"]),
        Route("/admin/tenants/{name}/limits", admin(set_limits, body="json"), methods=["PATCH"]),
        Route("/admin/tenants/{name}/models", admin(set_models, body="json"), methods=["PUT"]),
        Route("/admin/tenants/{name}/guest", admin(deploy, body="module"), methods=["PUT"]),
        Route("/admin/tenants/{name}/keys", admin(create_key, 201), methods=["POST"]),
        Route("/admin/tenants/{name}/keys", admin(list_keys), methods=["GET"]),
        Route("/admin/tenants/{name}/keys/{key_id}", admin(revoke_key), methods=["DELETE"]),
        Route("/admin/tenants/{name}/rate-limits", admin(show_rates), methods=["GET"]),
        Route("/admin/tenants/{name}/rate-limits", admin(set_rates, body="json"), methods=["PUT"]),
        Route("/admin/tenants/{name}/usage", admin(usage, body="query"), methods=["GET"]),
        Route("/admin/tenants/{name}/adapters", admin(list_adapters), methods=["GET"]),
        Route("/admin/tenants/{name}/adapters/{alias}", admin(bind_adapter, body="json"), methods=["PUT"]),
        Route("/admin/tenants/{name}/adapters/{alias}", admin(unbind_adapter), methods=["DELETE"]),
    ]


def _model_list(value: Any) -> list[str]:
    """A body's list of model ids (None: none, every model); ApiError 400 for anything else."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ApiError(400, "models must be a list of model ids")
    return value


def _status_of(request: Request) -> int:
    """404 when the path names a tenant (or key) that is not there, else 400 (e.g. a duplicate name)."""
    return 404 if "name" in request.path_params else 400
