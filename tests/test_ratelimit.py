"""The shared token bucket: reservations space calls at the limit; overrides per ERP."""

from __future__ import annotations

import itertools
import time

import pytest
import redis

from config.keys import KeySpace
from config.models import Erp
from erp_sync.errors import InvalidInput
from erp_sync.throttle.ratelimit import (
    DEFAULT_LIMITS,
    HEADROOM,
    RateLimit,
    TokenBucket,
    limit_for,
    set_limit,
)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the clock fakeredis's TIME reads, so waits do not depend on how busy the machine is."""
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)


def test_a_burst_is_free_and_later_calls_wait_their_turn(
    fake: redis.Redis, keys: KeySpace, frozen: None
) -> None:
    slept: list[float] = []
    bucket = TokenBucket(fake, keys, "acme", RateLimit(rate=10, burst=2), sleep=slept.append)
    waits = [bucket.take() for _ in range(12)]
    assert waits[:2] == [0, 0]
    # Each later caller reserved the next free slot, 0.1 s (plus the headroom) after the last.
    interval = 0.1 / HEADROOM
    assert 9 * interval < waits[-1] <= 10 * interval
    gaps = [b - a for a, b in itertools.pairwise(waits[2:])]
    assert all(0.1 < gap <= interval + 1e-6 for gap in gaps)


def test_two_workers_share_one_bucket_per_company(
    fake: redis.Redis, keys: KeySpace, frozen: None
) -> None:
    slept: list[float] = []
    limit = RateLimit(rate=5, burst=1)
    one = TokenBucket(fake, keys, "acme", limit, sleep=slept.append)
    two = TokenBucket(fake, keys, "acme", limit, sleep=slept.append)
    other = TokenBucket(fake, keys, "other", limit, sleep=slept.append)
    assert one.take() == 0
    assert two.take() > 0.15
    assert other.take() == 0


def test_limits_default_per_erp_and_can_be_overridden(fake: redis.Redis, keys: KeySpace) -> None:
    assert limit_for(fake, keys, Erp.XERO) == DEFAULT_LIMITS[Erp.XERO]
    set_limit(fake, keys, "xero", 3, 4)
    assert limit_for(fake, keys, Erp.XERO) == RateLimit(rate=3, burst=4)
    assert limit_for(fake, keys, Erp.MRI) == DEFAULT_LIMITS[Erp.MRI]
    with pytest.raises(InvalidInput, match="unknown ERP"):
        set_limit(fake, keys, "sap", 1, 1)
    with pytest.raises(InvalidInput, match="rate"):
        set_limit(fake, keys, "xero", 0, 1)
