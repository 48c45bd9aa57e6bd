"""One clock for the fleet: Redis server time.

Every schedule decision (what is due, which slot runs, what was missed) and every time a worker
compares is read from Redis (``TIME``), so a process whose own clock is wrong, behind or ahead by
seconds or by more than a period, can neither send a slot twice, nor early, nor skip one. The
time is read once at the start of each decision step and extended within the step by the local
monotonic clock, which no wall-clock adjustment moves: one round trip per step, not per reading.
"""

from __future__ import annotations

import time

import redis


class RedisClock:
    """Redis server time; ``refresh()`` reads it, calling the clock extends the last reading."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._base = 0.0
        self._mono: float | None = None

    def refresh(self) -> float:
        """Read Redis ``TIME`` now (one round trip) and return it in epoch seconds."""
        seconds, micros = self.client.time()
        return self.set(seconds, micros)

    def set(self, seconds: int, micros: int) -> float:
        """Take a ``TIME`` reply read by the caller (in a pipeline with other reads)."""
        self._base, self._mono = seconds + micros / 1_000_000, time.monotonic()
        return self._base

    def __call__(self) -> float:
        if self._mono is None:
            return self.refresh()
        return self._base + (time.monotonic() - self._mono)
