"""Starting `realm serve --replicas N`: Ray (connected or started), Serve's HTTP proxy on the
address asked for, the replicas; then, on SIGTERM or Ctrl-C, the drain and the shutdown.

A local Ray instance started here (a small object store: requests and answers are small; no
dashboard unless asked for, as it holds some 200 MiB) is stopped on the way out; a cluster named by
--ray-address or RAY_ADDRESS, or the one `ray start` runs on this machine, is left running, only this
deployment and Serve's proxies removed from it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import IO

import ray
from ray import serve
from ray.actor import ActorHandle
from ray.serve.exceptions import RayServeException

from host_functions import settings
from host_functions.errors import RealmError
from realm.cluster import ray_token
from realm.cluster.deployment import APP_NAME, DEPLOYMENT_NAME, Placement, application
from realm.server.build import ServeOptions

OBJECT_STORE_BYTES = 128 << 20  # Ray's minimum is 75 MiB; nothing large passes through it
_SETTINGS_PREFIX = "REALM_"
_CONNECT_TIMEOUT_S = 5
OWNER_NAMESPACE = "realm"  # where DeploymentOwner is named: a namespace every driver can see


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster this process joined: whether it started it, and what the start's line says of
    it (a local instance, with its dashboard's URL when it has one, or the address it was found at)."""

    started_here: bool
    description: str


def connect(address: str | None, dashboard: bool = False) -> Cluster:
    """Connect to the Ray cluster at `address`, else at $RAY_ADDRESS, else to the one `ray start` runs
    on this machine (as a bare `ray.init()` would), or else start a local one, with Ray's dashboard on
    127.0.0.1 when `dashboard`. Raises RealmError when the cluster cannot be reached, or for
    `dashboard` with a cluster not started here (its dashboard is its own)."""
    named = address or os.environ.get("RAY_ADDRESS") or None
    found = None if named else _cluster_of_ray_start()
    joined = named or found
    if joined is not None and dashboard:
        raise RealmError(f"--ray-dashboard is for a local Ray instance; the cluster at {joined} has its own")
    if named is not None:
        _check_reachable(named)
        _join(named)
        return Cluster(started_here=False, description=f"the Ray cluster at {named}")
    if found is not None:
        _join("auto")  # Ray's own record of it, and the token ray.init sends to a cluster it finds itself
        return Cluster(started_here=False, description=f"the Ray cluster of `ray start` at {found}")
    try:
        context = ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=dashboard,
                           dashboard_host="127.0.0.1", object_store_memory=OBJECT_STORE_BYTES,
                           logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RealmError(f"cannot start a local Ray instance: {_first_line(exc)}") from None
    if dashboard:
        return Cluster(started_here=True, description=f"a local Ray instance, its dashboard on http://"
                                                      f"{context.dashboard_url}")
    return Cluster(started_here=True, description="a local Ray instance")


def _cluster_of_ray_start() -> str | None:
    """The address of the cluster that `ray start` runs on this machine, as Ray records it (Ray's
    own reader of that record: it knows where the record lives), when it answers. None when there
    is none, or the record is what a killed cluster left."""
    recorded = ray._private.utils.read_ray_address()
    if not recorded:
        return None
    try:
        _check_reachable(recorded)
    except RealmError:
        return None
    return str(recorded)


def _join(address: str) -> None:
    """ray.init(address) with what Ray's native client prints on stderr held back, and passed on once
    it succeeds: that client logs each of its retries (20 s of them for a cluster that refuses it),
    so that a failure is one RealmError instead, naming the token a cluster with token
    authentication wants."""
    with tempfile.TemporaryFile() as held:
        try:
            with _stderr_to(held):
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            why = _first_line(exc)
            if b"InvalidAuthToken" in _contents(held):
                why = (f"it wants Ray's token ({why}); set {ray_token.AUTH_MODE}=token, with the token of its "
                       "head node in RAY_AUTH_TOKEN or ~/.ray/auth_token")
            raise RealmError(f"cannot reach the Ray cluster at {address}: {why}") from None
        os.write(2, _contents(held))


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextmanager
def _stderr_to(file: IO[bytes]) -> Iterator[None]:
    """File descriptor 2 (where native code writes) pointed at `file` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _contents(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()


def _check_reachable(address: str) -> None:
    """RealmError at once for a host:port nobody answers on (ray.init would retry for minutes)."""
    host_port = ray_token.gcs_host_port(address)
    if host_port is None:
        return  # "auto" or a ray:// client address: ray.init finds or refuses it itself
    try:
        socket.create_connection(host_port, timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RealmError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def replica_cpus(replicas: int, threads: int | None) -> float:
    """Ray's CPU reservation of each replica: its --threads (else one CPU), no more than an equal
    share of the cluster's CPUs, so N replicas always fit (fractions of a CPU on a small machine)."""
    total = float(ray.cluster_resources().get("CPU", 1.0))
    return min(float(threads or 1), total / replicas)


def replica_env(threads: int) -> dict[str, str]:
    """The REALM_* settings the replicas run with: this process's (where the registry is), the
    kernels' thread count, and this process's REALM_HOME as an absolute path, set or not (a replica's
    working directory and user environment are Ray's)."""
    env = {name: value for name, value in os.environ.items() if name.startswith(_SETTINGS_PREFIX)}
    env[settings.HOME] = str(settings.home().resolve())
    env[settings.THREADS] = str(threads)
    return env


def serve_replicas(options: ServeOptions, replicas: int, threads: int | None, address: str | None, host: str,
                   port: int, drain_timeout: float, announce: Callable[[float, str], None],
                   dashboard: bool = False) -> int:
    """Serve `replicas` replicas of the server `options` describe on Ray (connect(), a local Ray with its
    dashboard when `dashboard`), each reserving replica_cpus() and running the cpu kernels on `threads`
    (else as many as it reserves, at least one); `announce(cpus, the cluster's description)` once they all serve.
    Returns the signal (SIGTERM or SIGINT) that stopped it, after the replicas drained (drain_timeout)
    and were removed and a Ray started here stopped. Raises RealmError."""
    cluster = connect(address, dashboard)
    try:
        cpus = replica_cpus(replicas, threads)
        placement = Placement(replicas, cpus, replica_env(threads or max(1, int(cpus))), drain_timeout)
        return _run(options, placement, host, port, lambda: announce(cpus, cluster.description),
                    own_ray=cluster.started_here)
    finally:
        if cluster.started_here:
            ray.shutdown()


def _run(options: ServeOptions, placement: Placement, host: str, port: int, announce: Callable[[], None],
         own_ray: bool) -> int:
    """Deploy the replicas behind Serve's proxy on host:port, call `announce` once they all serve,
    and serve until SIGTERM or SIGINT; then drain them (placement.drain_timeout), remove them and
    return the signal. Serve is left to Ray's shutdown where `own_ray` (a Ray started here)."""
    stop, received = _stop_on_signals()
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # this process's notices ("Started Serve", ...)
    owner = _own_the_deployment()
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        try:
            serve.run(application(options, placement), name=APP_NAME, route_prefix="/")
        except (RuntimeError, RayServeException) as exc:
            why = _why_not_started(exc)
            _remove(own_ray)
            raise RealmError(f"the replicas did not start: {why}") from None
        announce()
        stop.wait()
        _remove(own_ray)
        return received[0]
    finally:
        ray.kill(owner)


@ray.remote(num_cpus=0)
class DeploymentOwner:
    """The `realm serve` that runs a cluster's Realm deployment, by name: a named actor that is not
    detached ends with the process that made it, a SIGKILL included, and frees the name."""


def _own_the_deployment() -> ActorHandle:
    """Claim the cluster's Realm deployment for this process (the handle keeps the claim). Raises
    RealmError where a running `realm serve` has it (Serve would replace its application). What a
    killed one left (its application, and Serve when nothing else uses it) is removed first."""
    try:
        owner = DeploymentOwner.options(name=APP_NAME, namespace=OWNER_NAMESPACE).remote()  # type: ignore[attr-defined]
    except ValueError:  # the name is taken: registering a named actor is checked at once
        raise RealmError(f"Realm is already deployed on this Ray cluster (Serve application {APP_NAME!r}) by a "
                         "running `realm serve`") from None
    if APP_NAME in serve.status().applications:  # its `realm serve` was killed before it removed it
        _remove(own_ray=False)
    return owner


def _why_not_started(exc: Exception) -> str:
    """What stopped the deployment: the last line of the replicas' error as Serve reports it (a
    replica's exception, e.g. a chat template that does not load), else Serve's own message."""
    app = serve.status().applications.get(APP_NAME)
    deployment = app.deployments.get(DEPLOYMENT_NAME) if app is not None else None
    lines = [line.strip() for line in (deployment.message if deployment else str(exc)).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _remove(own_ray: bool) -> None:
    """Remove the deployment (each replica drains its requests in flight first), then, on a cluster
    this process joined, Serve itself (its controller and proxies) unless other applications still
    use it. A Ray started here is stopped whole next: Serve's own shutdown would only add the noise of
    its controller's retried tasks."""
    serve.delete(APP_NAME)
    if not own_ray and not serve.status().applications:
        serve.shutdown()


def _stop_on_signals() -> tuple[threading.Event, list[int]]:
    """An event set by the first SIGTERM or SIGINT, and the signal it was; a second signal
    interrupts the drain (KeyboardInterrupt: Ray and Serve are still stopped on the way out)."""
    stop, received = threading.Event(), []

    def handle(sig: int, frame: FrameType | None) -> None:
        if stop.is_set():
            signal.default_int_handler(sig, frame)
        received.append(sig)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop, received
