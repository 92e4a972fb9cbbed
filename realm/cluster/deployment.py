"""The Ray Serve deployment: each replica is Realm's whole server (the Server and Starlette app that
`realm serve` builds), built in the replica from the same ServeOptions.

A replica takes the REALM_* settings of the `realm serve` that deployed it (where the registry is:
REALM_HOME, later REALM_REGISTRY_URL) as an argument, set in its environment before it builds: not as
Ray's runtime_env, whose agent logs the variables it sets (the admin key, a database password).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ray import serve
from ray.serve.deployment import Application
from starlette.types import ASGIApp

from realm.cluster.header import with_replica_header
from realm.cluster.router import TenantRouter
from realm.cluster.routing import key_hash
from realm.server.app import Server, create_app
from realm.server.build import ServeOptions, build_server

APP_NAME = "realm"
DEPLOYMENT_NAME = "Realm"
_HEALTH_PERIOD_S = 2  # how soon Ray notices a replica that hangs (one that dies is noticed at once)
_HEALTH_TIMEOUT_S = 30
_ROUTER_SLACK = 8  # requests a replica takes beyond workers + queue before the router tries the next rank


@dataclass(frozen=True)
class Placement:
    """How many replicas, what each reserves and holds, and how long a stopping one drains."""

    replicas: int
    cpus: float  # Ray's CPU reservation of one replica (fractional: two fit on two cores)
    env: dict[str, str]  # the REALM_* settings of the replicas
    drain_timeout: float  # seconds a stopping replica waits for its requests in flight


@serve.ingress()
class RealmReplica:
    """One replica: a Server of its own, its responses marked with its replica id."""

    def __init__(self, options: ServeOptions, env: dict[str, str]) -> None:
        os.environ.update(env)
        self.server: Server = build_server(options)
        self.replica_id: str = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return with_replica_header(create_app(self.server), self.replica_id)

    def __del__(self) -> None:
        # Called after Serve drained the replica (graceful_shutdown_timeout_s): what still runs ends now.
        if not hasattr(self, "server"):
            return  # its server never built
        self.server.shutting_down = True
        self.server.runner.cancel_all()
        self.server.runner.close()
        self.server.usage.close()
        self.server.models.close()


def application(options: ServeOptions, placement: Placement) -> Application:
    """The Serve application of `placement.replicas` replicas of the server `options` describe."""
    admin = options.config.admin_key
    router = {"request_router_class": f"{TenantRouter.__module__}.{TenantRouter.__name__}",
              "request_router_kwargs": {"admin_hash": key_hash(admin) if admin else None}}
    deployment = serve.deployment(
        name=DEPLOYMENT_NAME, num_replicas=placement.replicas,
        ray_actor_options={"num_cpus": placement.cpus},
        max_ongoing_requests=options.config.workers + options.config.max_queue + _ROUTER_SLACK,
        max_queued_requests=options.config.max_queue,  # per proxy, once every replica is full: then 503
        graceful_shutdown_timeout_s=placement.drain_timeout, health_check_period_s=_HEALTH_PERIOD_S,
        health_check_timeout_s=_HEALTH_TIMEOUT_S, request_router_config=router)(RealmReplica)
    return deployment.bind(options, placement.env)
