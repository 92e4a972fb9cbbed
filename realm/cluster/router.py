"""Ray Serve's request router for Realm's replicas: each tenant on one replica (routing.py).

It runs in Ray Serve's HTTP proxy, once per request. The proxy hands it the request as the pickled
ASGI scope it sends the replica (ray.serve's StreamingHTTPRequest, the first argument), so the
router reads the `Authorization` header there and ranks the running replicas by the key's hash: the
first that accepts the request serves it (the next ones only while the first is full or gone, and
they are where its tenants move when it dies). The admin may pick a replica with `x-realm-replica`
(its own /metrics, /admin/health); anyone else's header is ignored, so a tenant cannot spread its
load over replicas to get around per-replica rate limits.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from realm.cluster.routing import REPLICA_HEADER, header, ranked, tenant_of


class TenantRouter(RequestRouter):
    """Rendezvous hashing of the bearer key's SHA-256 over the running replicas."""

    def initialize_state(self, admin_hash: str | None = None, **kwargs: Any) -> None:
        """admin_hash: the SHA-256 of the admin key (request_router_kwargs), or None without one."""
        self._admin_hash = admin_hash

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """The replicas in the request's order, one per rank, so each is tried in turn."""
        if not candidate_replicas or pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # back off between rounds over the ranks
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        headers = _headers(pending_request)
        tenant = tenant_of(headers)
        chosen = header(headers, REPLICA_HEADER)
        if chosen in by_id and tenant is not None and tenant == self._admin_hash:
            return [[by_id[chosen]]]
        key = tenant or pending_request.metadata.internal_request_id  # no key: spread over the replicas
        return [[by_id[replica]] for replica in ranked(key, list(by_id))]

    def _get_pending_request_matching_metadata(self, request_metadata: Any = None) -> PendingRequest | None:
        # The replica chosen for a request serves that request: the base class would hand it to
        # whichever request waits longest, another tenant's.
        return self._get_pending_request_matching_internal_request_id(request_metadata)


def _headers(pending_request: PendingRequest) -> list[tuple[bytes, bytes]]:
    """The request's ASGI headers; none for a call that is not an HTTP request from the proxy."""
    arg = pending_request.args[0] if pending_request.args else None
    if isinstance(arg, bytes):
        try:
            arg = pickle.loads(arg)  # the proxy's own bytes (ray.serve._private.proxy_request_response)
        except Exception:  # noqa: BLE001 (not the proxy's request: route it as one without a key)
            return []
    scope = getattr(arg, "asgi_scope", None)
    return list(scope.get("headers", [])) if isinstance(scope, dict) else []
