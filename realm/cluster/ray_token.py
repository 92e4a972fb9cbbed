"""Ray's token authentication, for the cluster that `realm serve --replicas --ray-address` joins.

In Ray 2.60 (the version tested), a local `ray.init()` turns token authentication on and writes a token to
~/.ray/auth_token, and every later `ray start --head` on that machine uses it. A client sends the
token only with RAY_AUTH_MODE=token. Ray reads that variable once, when it is imported, and
`ray.init()` sets it for a cluster it finds alone (address "auto") but never for one it is given.
Without this module, `--ray-address HOST:PORT` of a cluster that runs on this very machine would be
refused after 20 s of retries. So for an address of this machine, the token this machine holds is
sent, as `ray.init()` would send it. A cluster elsewhere gets a token only when RAY_AUTH_MODE says so:
that is Ray's rule, since a token is not for just any address one names.

Nothing here imports Ray: this is read before Ray is.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

AUTH_MODE = "RAY_AUTH_MODE"
_TOKEN = "RAY_AUTH_TOKEN"
_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"


def send_local_token_to(address: str | None) -> None:
    """Set RAY_AUTH_MODE=token for `address` (host:port of the cluster; None or "auto" is left to
    `ray.init()`) when the variable is unset, this machine holds a token, and the host is this
    machine. Call it before Ray is imported."""
    if address is None or AUTH_MODE in os.environ or not token_available():
        return
    host_port = gcs_host_port(address)
    if host_port is not None and is_this_machine(host_port[0]):
        os.environ[AUTH_MODE] = "token"


def gcs_host_port(address: str) -> tuple[str, int] | None:
    """The host (an IPv6 one without its brackets) and port of a cluster's GCS address HOST:PORT; None
    for Ray's other forms ("auto", a ray:// client address), which Ray resolves itself."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return None
    return host.strip("[]"), int(port)


def token_available() -> bool:
    """Whether this machine holds a Ray token where Ray looks for one: $RAY_AUTH_TOKEN, the file at
    $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token."""
    if os.environ.get(_TOKEN):
        return True
    path = Path(os.environ.get(_TOKEN_PATH) or Path.home() / ".ray" / "auth_token")
    return path.is_file()


def is_this_machine(host: str) -> bool:
    """Whether `host` names this machine: a loopback address, or one of its own (a socket can be
    bound to it). False for a name that does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        if ipaddress.ip_address(sockaddr[0]).is_loopback:
            return True
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((sockaddr[0], 0))
                return True
            except OSError:
                continue
    return False
