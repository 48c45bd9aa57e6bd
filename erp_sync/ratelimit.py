"""Per-company ERP rate limit shared by every worker: a token bucket in Redis (one Lua script).

The bucket *reserves*: a caller that finds no token takes a future one (the count goes negative)
and is told how long to sleep until it is due. Waiters therefore never race for the same token,
the ERP sees calls spaced at exactly the limit under load (no lost capacity to polling), and a
sync waits for its turn rather than failing. A reservation further out than ``MAX_RESERVE`` seconds
is refused and the caller polls, so a crowd of waiters cannot book the ERP for hours ahead.

Time is Redis ``TIME``, so workers with skewed clocks share one bucket correctly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.keys import KeySpace
from config.models import Erp, first_error
from erp_sync import lua
from erp_sync.connectors.base import Connector, Page
from erp_sync.errors import InvalidInput

MAX_RESERVE = 30.0
# Tokens are granted at this fraction of the limit: a call reaches the ERP a little after its
# token (thread wake-up, network), and uneven delays could otherwise bunch two calls closer than
# the limit allows. One percent of headroom absorbs milliseconds of jitter at any realistic rate.
HEADROOM = 0.99


class RateLimit(BaseModel):
    """``rate`` calls per second on average, at most ``burst`` back to back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(gt=0, le=10_000)
    burst: float = Field(ge=1, le=10_000)


# Conservative defaults per ERP, below the published per-tenant API limits where there are any
# (QuickBooks Online 500/min per realm, Xero 60/min per tenant); desktop ERPs reached through an
# on-premise agent (QuickBooks Desktop Web Connector, hh2 for Sage) are slower still.
DEFAULT_LIMITS: dict[Erp, RateLimit] = {
    Erp.QUICKBOOKS_DESKTOP: RateLimit(rate=2, burst=2),
    Erp.QUICKBOOKS_ONLINE: RateLimit(rate=8, burst=10),
    Erp.XERO: RateLimit(rate=1, burst=5),
    Erp.NETSUITE: RateLimit(rate=5, burst=5),
    Erp.SAGE_100: RateLimit(rate=2, burst=2),
    Erp.SAGE_300_CRE: RateLimit(rate=2, burst=2),
    Erp.VIEWPOINT_VISTA: RateLimit(rate=4, burst=4),
    Erp.VIEWPOINT_SPECTRUM: RateLimit(rate=4, burst=4),
    Erp.SAGE_INTACCT: RateLimit(rate=5, burst=5),
    Erp.CMIC: RateLimit(rate=4, burst=4),
    Erp.ACUMATICA: RateLimit(rate=5, burst=5),
    Erp.YARDI: RateLimit(rate=3, burst=3),
    Erp.MRI: RateLimit(rate=3, burst=3),
    Erp.WORKDAY: RateLimit(rate=5, burst=5),
}


def limit_for(client: redis.Redis, keys: KeySpace, erp: Erp) -> RateLimit:
    """The ERP's limit: the operator's override if one is stored, else the default."""
    raw = client.hget(keys.rate_limit_overrides, erp.value)
    return RateLimit.model_validate_json(raw) if raw else DEFAULT_LIMITS[erp]


def set_limit(client: redis.Redis, keys: KeySpace, erp: str, rate: float,
              burst: float) -> RateLimit:
    """Store an override for every company on ``erp`` (validated; takes effect on the next call)."""
    if erp not in set(Erp):
        raise InvalidInput(f"unknown ERP {erp!r} (one of: {', '.join(Erp)})")
    try:
        limit = RateLimit(rate=rate, burst=burst)
    except ValidationError as exc:
        raise InvalidInput(f"invalid rate limit {first_error(exc)}") from None
    client.hset(keys.rate_limit_overrides, erp, json.dumps(limit.model_dump()))
    return limit


class TokenBucket:
    """The shared bucket of one company; ``take()`` blocks until a call is allowed."""

    def __init__(self, client: redis.Redis, keys: KeySpace, company: str, limit: RateLimit,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.key = keys.rate_limit(company)
        self.limit = limit
        self.sleep = sleep
        self._take = lua.load(client, "ratelimit_take")

    def take(self) -> float:
        """Wait for (and consume) one token; returns the seconds spent waiting."""
        waited = 0.0
        while True:
            granted, wait = self._take(keys=[self.key], args=[
                self.limit.rate * HEADROOM, self.limit.burst, MAX_RESERVE])
            delay = float(wait)
            if int(granted):
                if delay > 0:
                    self.sleep(delay)
                return waited + delay
            self.sleep(min(delay - MAX_RESERVE, MAX_RESERVE))
            waited += min(delay - MAX_RESERVE, MAX_RESERVE)


class Throttled(Connector):
    """A connector whose every call first takes a token from the company's shared bucket."""

    def __init__(self, inner: Connector, bucket: TokenBucket) -> None:
        self.inner, self.bucket = inner, bucket
        self.family = inner.family

    def vendors(self, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.vendors(since, cursor)

    def jobs(self, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.jobs(since, cursor)

    def standard_cost_codes(self, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.standard_cost_codes(since, cursor)

    def project_cost_codes(self, job: str, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.project_cost_codes(job, since, cursor)

    def job_costs(self, job: str, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.job_costs(job, since, cursor)

    def bill_payments(self, job: str, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.bill_payments(job, since, cursor)
