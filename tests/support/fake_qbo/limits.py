"""Intuit's per-company throttles, and the counters that prove a client kept within them.

Intuit documents 500 requests per minute per realm and at most 10 concurrent requests per realm
and app; beyond either, HTTP 429 ThrottleExceeded. Assumptions (the docs leave them open):

- The minute is a rolling 60 seconds (not a calendar minute) and EVERY arriving API request counts
  in it, including those answered 429: a client that retries at once only digs deeper.
- ``Retry-After`` (whole seconds, at least 1) comes with the rate limit's 429: the time until the
  window has room again if nothing more arrives. The concurrency 429 carries no ``Retry-After``
  (nothing says when a slot frees), so a client needs its own backoff for it.
- The rate limit is checked before the concurrency limit; a request refused for either still
  counts in ``max_concurrency`` (the peak of requests in flight at once, refused ones included)
  and ``max_requests_per_minute`` (the most arrivals in any 60 s window), so a test asserting
  ``max_concurrency <= 10`` checks the client, not the server's refusals.
- The token endpoint is not throttled per company (Intuit's OAuth server is a separate service).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Refusal:
    """Why a request is refused: ``reason`` is ``rate`` or ``concurrency``."""

    reason: str
    retry_after: int | None


@dataclass
class Limits:
    rate_per_minute: int = 500
    concurrency: int = 10
    window: float = 60.0
    arrivals: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    max_concurrency: int = 0
    max_requests_per_minute: int = 0
    throttled_rate: int = 0
    throttled_concurrency: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self) -> Refusal | None:
        """Count an arriving request; None admits it (the caller must ``release`` it)."""
        now = time.monotonic()
        with self.lock:
            self.arrivals.append(now)
            while self.arrivals and self.arrivals[0] <= now - self.window:
                self.arrivals.popleft()
            self.max_requests_per_minute = max(self.max_requests_per_minute, len(self.arrivals))
            self.max_concurrency = max(self.max_concurrency, self.in_flight + 1)
            excess = len(self.arrivals) - self.rate_per_minute
            if excess > 0:
                self.throttled_rate += 1
                # Room for one more once excess + 1 arrivals (this one included) have left.
                frees_at = self.arrivals[excess] + self.window
                return Refusal("rate", max(1, math.ceil(frees_at - now)))
            if self.in_flight >= self.concurrency:
                self.throttled_concurrency += 1
                return Refusal("concurrency", None)
            self.in_flight += 1
            return None

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def set(self, rate_per_minute: int | None, concurrency: int | None) -> None:
        with self.lock:
            if rate_per_minute is not None:
                self.rate_per_minute = rate_per_minute
            if concurrency is not None:
                self.concurrency = concurrency
