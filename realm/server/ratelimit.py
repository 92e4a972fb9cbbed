"""Per-tenant rate limits: requests per minute and tokens per minute over a sliding 60 s window.

Requests are counted when admitted. Tokens are reserved at admission, as many as the request may
use (its prompt tokens plus max_tokens for every choice), and settled when it ends: the unused part
is refunded, so a tenant can never be served more than its limit while its requests run. A
reservation that can never fit the limit is refused as such (the server's 400); one that does not
fit now gets the seconds until the window has room for it (429 with Retry-After). Every tenant has
its own window, so one tenant's load never throttles another.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass(eq=False)
class Reservation:
    """Tokens held in a tenant's window: what a request may use, until it settles what it used."""

    at: float
    tokens: int
    window: _Window | None = None  # None once the window let it go (expired or settled to nothing)


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[Reservation] = field(default_factory=deque)
    token_sum: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0].at <= now - WINDOW_S:
            gone = self.tokens.popleft()
            self.token_sum -= gone.tokens
            gone.window = None

    def room_at(self, tokens: int, limit: int, now: float) -> float:
        """When `tokens` more fit under `limit`: as the oldest reservations leave the window."""
        over = self.token_sum + tokens - limit
        for held in self.tokens:
            over -= held.tokens
            if over <= 0:
                return held.at + WINDOW_S
        return now + WINDOW_S


class RateLimiter:
    """Sliding-window limits per tenant; a limit of 0 is off. Used from the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, tenant: str, requests_per_minute: int, tokens_per_minute: int) -> tuple[str, int] | None:
        """Count a request for `tenant` under these limits, or return (which limit, seconds to wait)
        without counting it: its requests are at the limit, or its tokens are all spoken for."""
        now = self._clock()
        window = self._window(tenant, now)
        if requests_per_minute and len(window.requests) >= requests_per_minute:
            return "requests", _wait(window.requests[0] + WINDOW_S, now)
        if tokens_per_minute and window.token_sum >= tokens_per_minute:
            return "tokens", _wait(window.room_at(1, tokens_per_minute, now), now)
        window.requests.append(now)
        return None

    def reserve(self, tenant: str, tokens: int, tokens_per_minute: int) -> Reservation | int:
        """Hold `tokens` of `tenant`'s window for a request about to run, or return the seconds until
        they fit. Raises TooLarge when they never can (more than the limit itself)."""
        now = self._clock()
        window = self._window(tenant, now)
        if tokens_per_minute and tokens > tokens_per_minute:
            raise TooLarge(tokens, tokens_per_minute)
        if tokens_per_minute and window.token_sum + tokens > tokens_per_minute:
            return _wait(window.room_at(tokens, tokens_per_minute, now), now)
        held = Reservation(now, max(0, tokens), window)
        window.tokens.append(held)
        window.token_sum += held.tokens
        return held

    def settle(self, held: Reservation, used: int) -> None:
        """Charge what the request used instead of what it reserved (refunding the rest; a request
        that used more, by the guest's own count, is charged that). A reservation the window already
        let go charges nothing more."""
        window = held.window
        if window is None:
            return
        used = max(0, used)
        window.token_sum += used - held.tokens
        held.tokens = used

    def _window(self, tenant: str, now: float) -> _Window:
        window = self._windows.setdefault(tenant, _Window())
        window.expire(now)
        return window


class TooLarge(Exception):
    """A reservation over the whole per-minute limit: it can never be admitted."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"{tokens} tokens over a limit of {limit} per minute")
        self.tokens, self.limit = tokens, limit


def _wait(free_at: float, now: float) -> int:
    return max(1, math.ceil(free_at - now))
