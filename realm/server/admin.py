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
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from host_functions.errors import AuthError, GuestError, TenantError
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


def admin_routes(registry: TenantRegistry, admin_key: str | None, max_body_bytes: int) -> list[Route]:
    """The admin routes over `registry`, each open only to `admin_key`; JSON bodies up to max_body_bytes."""

    def admin(handler: Callable[[Request], Awaitable[Any]],
              status: int = 200) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            require_admin(request, admin_key)
            try:
                return JSONResponse(await handler(request), status_code=status)
            except TenantError as exc:
                raise ApiError(_status_of(request), str(exc)) from None
            except GuestError as exc:
                raise ApiError(400, str(exc), code="invalid_module") from None
        return endpoint

    async def list_tenants(request: Request) -> Any:
        return {"data": [t.as_json() for t in registry.list()]}

    async def create_tenant(request: Request) -> Any:
        body = await read_json(request, max_body_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ApiError(400, 'the body must be {"name": ..., "limits": {...}}')
        limits = body.get("limits") or {}
        if not isinstance(limits, dict):
            raise ApiError(400, "limits must be an object of limit name -> number")
        return registry.create(body["name"], parse_limits({k: str(v) for k, v in limits.items()})).as_json()

    async def set_limits(request: Request) -> Any:
        body = await read_json(request, max_body_bytes)
        if not isinstance(body, dict) or not body:
            raise ApiError(400, "the body must be an object of limit name -> number")
        registry.get(request.path_params["name"])  # 404 for an unknown tenant; a bad value is a 400 below
        try:
            return registry.set_limits(request.path_params["name"], {k: str(v) for k, v in body.items()}).as_json()
        except TenantError as exc:
            raise ApiError(400, str(exc)) from None

    async def show_tenant(request: Request) -> Any:
        return registry.get(request.path_params["name"]).as_json()

    async def delete_tenant(request: Request) -> Any:
        registry.delete(request.path_params["name"])
        return {"deleted": request.path_params["name"]}

    async def deploy(request: Request) -> Any:
        data = await read_body(request, MAX_MODULE_BYTES)
        # Compiling a module takes a while: off the event loop.
        return (await run_in_threadpool(registry.deploy, request.path_params["name"], data)).as_json()

    async def create_key(request: Request) -> Any:
        record, key = registry.create_key(request.path_params["name"])
        return {**record.as_json(), "key": key}

    async def list_keys(request: Request) -> Any:
        return {"data": [k.as_json() for k in registry.list_keys(request.path_params["name"])]}

    async def revoke_key(request: Request) -> Any:
        return registry.revoke_key(request.path_params["name"], request.path_params["key_id"]).as_json()

    async def show_rates(request: Request) -> Any:
        registry.get(request.path_params["name"])
        return registry.rate_limits(request.path_params["name"]).as_json()

    async def set_rates(request: Request) -> Any:
        body = await read_json(request, max_body_bytes)
        names = set(RateLimits().as_json())
        if not isinstance(body, dict) or not set(body) <= names:
            raise ApiError(400, f"the body must be an object with {' and/or '.join(sorted(names))}")
        return registry.set_rate_limits(request.path_params["name"], RateLimits(**body)).as_json()

    async def list_adapters(request: Request) -> Any:
        bound = registry.adapters(request.path_params["name"])
        return {"data": [{"alias": alias, "path": b.path, "scale": b.scale} for alias, b in bound.items()]}

    async def bind_adapter(request: Request) -> Any:
        body = await read_json(request, max_body_bytes)
        scale = body.get("scale", 1.0) if isinstance(body, dict) else None
        if (not isinstance(body, dict) or not isinstance(body.get("path"), str) or isinstance(scale, bool)
                or not isinstance(scale, (int, float))):
            raise ApiError(400, 'the body must be {"path": FILE, "scale": number}')
        binding = registry.set_lora(request.path_params["name"], body["path"], float(scale),
                                    request.path_params["alias"])
        return {"alias": request.path_params["alias"], "path": binding.path, "scale": binding.scale}

    async def unbind_adapter(request: Request) -> Any:
        return {"unbound": registry.unset_lora(request.path_params["name"], request.path_params["alias"])}

    return [
        Route("/admin/tenants", admin(list_tenants), methods=["GET"]),
        Route("/admin/tenants", admin(create_tenant, 201), methods=["POST"]),
        Route("/admin/tenants/{name}", admin(show_tenant), methods=["GET"]),
        Route("/admin/tenants/{name}", admin(delete_tenant), methods=["DELETE"]),
        Route("/admin/tenants/{name}/limits", admin(set_limits), methods=["PATCH"]),
        Route("/admin/tenants/{name}/guest", admin(deploy), methods=["PUT"]),
        Route("/admin/tenants/{name}/keys", admin(create_key, 201), methods=["POST"]),
        Route("/admin/tenants/{name}/keys", admin(list_keys), methods=["GET"]),
        Route("/admin/tenants/{name}/keys/{key_id}", admin(revoke_key), methods=["DELETE"]),
        Route("/admin/tenants/{name}/rate-limits", admin(show_rates), methods=["GET"]),
        Route("/admin/tenants/{name}/rate-limits", admin(set_rates), methods=["PUT"]),
        Route("/admin/tenants/{name}/adapters", admin(list_adapters), methods=["GET"]),
        Route("/admin/tenants/{name}/adapters/{alias}", admin(bind_adapter), methods=["PUT"]),
        Route("/admin/tenants/{name}/adapters/{alias}", admin(unbind_adapter), methods=["DELETE"]),
    ]


def _status_of(request: Request) -> int:
    """404 when the path names a tenant (or key) that is not there, else 400 (e.g. a duplicate name)."""
    return 404 if "name" in request.path_params else 400
