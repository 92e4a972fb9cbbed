"""Per-tenant rate limits: requests per minute and tokens per minute over a sliding 60 s window.

Requests are counted when admitted; tokens (prompt + completion) when a request ends, since only
then are they known. A tenant at its limit gets 429 with the seconds until the window frees room;
every tenant has its own window, so one tenant's load never throttles another.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]


class RateLimiter:
    """Sliding-window limits per tenant; a limit of 0 is off. Used from the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, tenant: str, requests_per_minute: int, tokens_per_minute: int) -> tuple[str, int] | None:
        """Count a request for `tenant` under these limits, or return (which limit, seconds to wait)
        without counting it."""
        now = self._clock()
        window = self._windows.setdefault(tenant, _Window())
        window.expire(now)
        if requests_per_minute and len(window.requests) >= requests_per_minute:
            return "requests", _wait(window.requests[0], now)
        if tokens_per_minute and window.token_sum >= tokens_per_minute:
            return "tokens", _wait(window.tokens[0][0], now)
        window.requests.append(now)
        return None

    def spend(self, tenant: str, tokens: int) -> None:
        """Charge tokens a finished request of `tenant` used."""
        if tokens > 0:
            window = self._windows.setdefault(tenant, _Window())
            window.tokens.append((self._clock(), tokens))
            window.token_sum += tokens


def _wait(oldest: float, now: float) -> int:
    return max(1, math.ceil(oldest + WINDOW_S - now))
