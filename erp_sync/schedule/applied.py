"""What beat has applied per company, and waiting for it (``settings set --wait``).

Beat writes an ``Applied`` record per company when it rebuilds that company's entries and then
publishes the version on the company's applied channel. A waiter subscribes *before* the settings
write, so the announcement cannot slip between write and subscribe; it also reads the record once,
in case a beat applied the version before the subscription saw it.
"""

from __future__ import annotations

import math
import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis
from pydantic import BaseModel, ConfigDict, field_validator

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.schedule.cadence import Cadence


class Applied(BaseModel):
    """Beat's record of a company's schedule: the settings version and each entry's cadence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    # kind -> ``Cadence.key`` (e.g. "every:3600", "daily@America/Chicago"); a kind missing here
    # has no due entry.
    cadences: dict[str, str]

    @field_validator("cadences")
    @classmethod
    def _known_kinds_and_cadences(cls, value: dict[str, str]) -> dict[str, str]:
        # A record beat cannot plan from is corrupt (and so rebuilt), never a crash per tick.
        for kind, key in value.items():
            SyncKind(kind)
            cadence = Cadence.from_key(key)
            if not math.isfinite(cadence.period) or cadence.period <= 0:
                raise ValueError(f"bad cadence {key!r}")
            if cadence.timezone is not None:
                try:
                    ZoneInfo(cadence.timezone)
                except (ZoneInfoNotFoundError, ValueError, OSError):
                    raise ValueError(f"unknown time zone in {key!r}") from None
        return value


def parse_applied(raw: object) -> Applied | None:
    """Beat's record of a company, or ``None`` when missing or unreadable (the one reader)."""
    if not raw or isinstance(raw, Exception):
        return None
    try:
        return Applied.model_validate_json(str(raw))
    except ValueError:
        return None


def applied_version(client: redis.Redis, keys: KeySpace, company: str) -> int:
    record = parse_applied(client.hget(keys.beat_applied, company))
    return record.version if record else 0


class AppliedWaiter:
    """Subscribe first, write, then ``wait(version)``: milliseconds until beat applied it."""

    def __init__(self, client: redis.Redis, keys: KeySpace, company: str) -> None:
        self.client, self.keys, self.company = client, keys, company
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(keys.applied_channel(company))

    def wait(self, version: int, timeout: float, started: float) -> float | None:
        """Block until beat applied ``version`` (or later); ``None`` after ``timeout`` seconds."""
        try:
            deadline = started + timeout
            while True:
                if applied_version(self.client, self.keys, self.company) >= version:
                    return (time.monotonic() - started) * 1000
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                message = self.pubsub.get_message(timeout=min(remaining, 1.0))
                if message and int(message["data"]) >= version:
                    return (time.monotonic() - started) * 1000
        finally:
            self.close()

    def close(self) -> None:
        self.pubsub.close()
