"""The listening socket of `realm serve`, bound before the model loads.

Binding first makes a busy port or an address that is not this machine's one `Error:` line and exit
status 1 at once (uvicorn would log its own error and exit with its own status, after the model
loaded); uvicorn then serves on the bound socket.
"""

from __future__ import annotations

import errno
import socket

from host_functions.errors import RealmError

BACKLOG = 2048  # uvicorn's default


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (the first address `host` resolves to) and listening.

    Raises RealmError naming the address and the cause: a name that does not resolve, an address not
    on this machine, a port in use or one this user may not take."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise RealmError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart does not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        hint = " (is another server running there? choose another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise RealmError(f"cannot listen on {host}:{port}: {_reason(exc)}{hint}") from None
    sock.set_inheritable(True)
    return sock


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
