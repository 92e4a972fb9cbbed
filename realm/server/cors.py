"""CORS for browser front-ends: off unless `realm serve --cors-origin ORIGIN` names origins.

Starlette's CORSMiddleware answers preflight (OPTIONS with Access-Control-Request-Method) itself,
before routing, and adds the allow headers to the answers of the origins it was given; every other
origin gets no CORS headers, so a browser keeps its page from reading the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

PREFLIGHT_MAX_AGE_S = 600


def cors_middleware(origins: Sequence[str]) -> list[Middleware]:
    """The middleware that lets `origins` call the API ("*": any origin); none for no origins.
    Credentials are not allowed: keys travel in the Authorization header, which the browser sends
    only because the page sets it."""
    if not origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["*"],
                       allow_headers=["*"], max_age=PREFLIGHT_MAX_AGE_S)]
