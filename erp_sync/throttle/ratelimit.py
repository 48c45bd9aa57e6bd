"""Per-company ERP rate limit shared by every worker: a token bucket in Redis (one Lua script).

The bucket *reserves*: a caller that finds no token takes a future one (the count goes negative)
and is told how long to sleep until it is due, so waiters never race for the same token and the
ERP sees calls spaced at the limit under load. A worker sleeps only up to
``ERP_SYNC_DEFER_AFTER_SECONDS``; a longer wait takes no token but a *ticket*, a place in the
bucket's queue of waiters, and the sync gives its slot back until its turn (``TokenBucket``).
Callers outside a worker (``reconcile``) reserve up to ``MAX_RESERVE`` seconds ahead and poll
beyond it.

Time is Redis ``TIME``, so workers with skewed clocks share one bucket correctly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.keys import KeySpace
from config.members import limit_field
from config.models import Erp, first_error
from erp_sync.errors import InvalidInput, MustWait
from erp_sync.infra import lua

MAX_RESERVE = 30.0
# Tokens are granted at this fraction of the limit: a call reaches the ERP a little after its
# token (thread wake-up, network), and uneven delays could otherwise bunch two calls closer than
# the limit allows. Two percent of headroom absorbs a call that leaves up to 2 % of an interval
# after its token (20 ms at 1 call/s); a call later than that can arrive closer than one
# interval behind the one before (measured: bench/fairness.py, docs/reliability.md).
HEADROOM = 0.98


DEFAULT_CONCURRENCY = 2  # syncs of one company running at once, fleet-wide
# The slowest rate an operator may set: one call per 100 s. Below it a sync of a few dozen calls
# takes hours, and a value like 1e-300 stops a company's syncs for ever without a word.
MIN_RATE = 0.01


class RateLimit(BaseModel):
    """``rate`` calls per second on average, at most ``burst`` back to back, and at most
    ``concurrency`` syncs of one company running at once across the fleet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(ge=MIN_RATE, le=10_000)
    burst: float = Field(ge=1, le=10_000)
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=1000)
    # ERP requests of one company in flight at once, fleet-wide (None: no cap). Enforced by
    # connectors that make their own HTTP requests (erp_sync/throttle/inflight.py).
    requests: int | None = Field(None, ge=1, le=1000)


class CompanyLimit(BaseModel):
    """A company's own override of its ERP's limit; unset fields keep the ERP's value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float | None = Field(None, ge=MIN_RATE, le=10_000)
    burst: float | None = Field(None, ge=1, le=10_000)
    concurrency: int | None = Field(None, ge=1, le=1000)
    requests: int | None = Field(None, ge=1, le=1000)

    def over(self, base: RateLimit) -> RateLimit:
        return base.model_copy(update=self.model_dump(exclude_none=True))


# Conservative defaults per ERP, below the published per-tenant API limits where there are any
# (QuickBooks Online 500/min per realm, Xero 60/min per tenant); desktop ERPs reached through an
# on-premise agent (QuickBooks Desktop Web Connector, hh2 for Sage) are slower still.
DEFAULT_LIMITS: dict[Erp, RateLimit] = {
    Erp.QUICKBOOKS_DESKTOP: RateLimit(rate=2, burst=2),
    # 500 requests a minute and 10 at once per realm: 8/s with a burst of 10 stays under 500 in
    # any 60 s window (10 + 60 x 8 = 490).
    # Its project syncs read the connector's mirror, not QuickBooks: the requests cap, not the
    # syncs-at-once cap, is what protects Intuit, so more of a company's syncs may run at once.
    Erp.QUICKBOOKS_ONLINE: RateLimit(rate=8, burst=10, concurrency=8, requests=10),
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


def effective_limit(erp: Erp, erp_override: str | None, company_override: str | None) -> RateLimit:
    """The limit a company's syncs obey: default or ERP override, then the company's own."""
    limit = RateLimit.model_validate_json(erp_override) if erp_override else DEFAULT_LIMITS[erp]
    if company_override:
        limit = CompanyLimit.model_validate_json(company_override).over(limit)
    return limit


def limit_for(
    client: redis.Redis, keys: KeySpace, erp: Erp, company: str | None = None
) -> RateLimit:
    """The limit of ``erp`` (and of ``company`` on it, when given), overrides applied."""
    fields = [erp.value, limit_field(company) if company else ""]
    erp_raw, company_raw = client.hmget(keys.rate_limit_overrides, fields)
    return effective_limit(
        erp,
        str(erp_raw) if erp_raw else None,
        str(company_raw) if company and company_raw else None,
    )


def set_limit(
    client: redis.Redis,
    keys: KeySpace,
    erp: str,
    rate: float,
    burst: float,
    concurrency: int = DEFAULT_CONCURRENCY,
    requests: int | None = None,
) -> RateLimit:
    """Store an override for every company on ``erp`` (validated; takes effect on the next call).

    ``requests`` (in flight at once) defaults to the ERP's own cap, which an override of the
    rate must not silently lift."""
    if erp not in set(Erp):
        raise InvalidInput(f"unknown ERP {erp!r} (one of: {', '.join(Erp)})")
    try:
        limit = RateLimit(
            rate=rate,
            burst=burst,
            concurrency=concurrency,
            requests=requests or DEFAULT_LIMITS[Erp(erp)].requests,
        )
    except ValidationError as exc:
        raise InvalidInput(f"invalid rate limit {first_error(exc)}") from None
    client.hset(keys.rate_limit_overrides, erp, limit.model_dump_json())
    return limit


def set_company_limit(
    client: redis.Redis,
    keys: KeySpace,
    company: str,
    change: CompanyLimit,
    begin: Callable[[], None] = lambda: None,
) -> CompanyLimit:
    """Store (merge) a company's own override; fields left unset keep the ERP's value.

    ``client`` may be a pipeline watching the overrides: ``begin`` then starts its MULTI
    between the read and the write, so the caller's audit row commits with the change."""
    raw = client.hget(keys.rate_limit_overrides, limit_field(company))
    current = CompanyLimit.model_validate_json(raw) if raw else CompanyLimit()
    merged = current.model_copy(update=change.model_dump(exclude_none=True))
    begin()
    client.hset(keys.rate_limit_overrides, limit_field(company), merged.model_dump_json())
    return merged


class TokenBucket:
    """The shared bucket of one company; ``take()`` returns once a call is allowed.

    A wait up to ``defer_after`` seconds is slept (the token is reserved, so the call goes out
    exactly on time); a longer one raises ``MustWait`` without taking a token, so the sync
    gives its worker slot back instead of sleeping in it, holding a *ticket*: its place in the
    bucket's queue of waiters. Tickets are one token interval apart, so deferred syncs come
    back one at a time instead of as a herd, and a sync that arrives while others wait queues
    behind them. ``ticket`` is the one a deferred sync returns with (``defer_after=None``:
    always sleep, for callers outside a worker such as ``reconcile``).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        company: str,
        limit: RateLimit,
        sleep: Callable[[float], None] = time.sleep,
        defer_after: float | None = None,
        ticket: float | None = None,
    ) -> None:
        self.key = keys.rate_limit(company)
        self.limit = limit
        self.sleep = sleep
        self.defer_after = defer_after
        self.ticket = ticket
        self._take = lua.load(client, "ratelimit_take")

    def take(self) -> float:
        """Wait for (and consume) one token; returns the seconds spent waiting."""
        defer = self.defer_after is not None
        reserve = self.defer_after if self.defer_after is not None else MAX_RESERVE
        waited = 0.0
        while True:
            granted, wait, ticket = self._take(
                keys=[self.key],
                args=[
                    self.limit.rate * HEADROOM,
                    self.limit.burst,
                    reserve,
                    self.ticket or 0,
                    1 if defer else 0,
                ],
            )
            delay = float(wait)
            if int(granted):
                self.ticket = None  # our turn was used
                if delay > 0:
                    self.sleep(delay)
                return waited + delay
            if defer:
                raise MustWait(delay, "the ERP rate limit", ticket=float(ticket))
            self.sleep(min(delay - MAX_RESERVE, MAX_RESERVE))
            waited += min(delay - MAX_RESERVE, MAX_RESERVE)
