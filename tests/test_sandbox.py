"""The sandbox ERP: deterministic seeding, incremental pages, changes over time, injected faults."""

from __future__ import annotations

import random

import pytest
import redis

from config.keys import KeySpace
from erp_sync.connectors.base import pages
from erp_sync.connectors.sandbox import SandboxErp
from erp_sync.connectors.sandbox_data import SandboxData
from erp_sync.errors import (
    BadCredentials,
    ErpServerError,
    InvalidInput,
    RateLimited,
    UnknownErpObject,
)
from tests.support.erp import small_company


def all_items(connector: SandboxErp, since: str | None = None) -> list[dict[str, object]]:
    return [i for p in pages(lambda c: connector.vendors(since, c)) for i in p.items]


def test_seeding_is_deterministic_per_company(fake: redis.Redis, keys: KeySpace) -> None:
    small_company(fake, keys, "acme")
    small_company(fake, keys, "other")
    first = all_items(SandboxErp(fake, keys, "acme"))
    assert len(first) == 30
    fake.delete(*fake.keys(f"{keys.prefix}:erp*:acme*"))
    SandboxData(fake, keys).configure("acme", vendors=30, page_size=10)
    assert all_items(SandboxErp(fake, keys, "acme")) == first
    assert all_items(SandboxErp(fake, keys, "other")) != first


def test_seeding_twice_writes_once(fake: redis.Redis, keys: KeySpace) -> None:
    data = small_company(fake, keys)
    assert data.ensure_seeded("acme") is True
    assert data.ensure_seeded("acme") is False


def test_pages_are_incremental_from_a_watermark(fake: redis.Redis, keys: KeySpace) -> None:
    data = small_company(fake, keys)
    erp = SandboxErp(fake, keys, "acme")
    listing = list(pages(lambda c: erp.vendors(None, c)))
    assert [len(p.items) for p in listing] == [10, 10, 10, 0]
    mark = listing[-1].watermark
    assert erp.vendors(mark, None).items == []
    added = data.add_vendor("acme", "Fresh Concrete")
    third = data.get("acme", "vendors", "V00003")
    assert third is not None
    renamed = {**third, "name": "Renamed"}
    data.put("acme", "vendors", renamed)
    assert erp.vendors(mark, None).items == [added, renamed]


def test_job_data_for_a_project_added_after_seeding(fake: redis.Redis, keys: KeySpace) -> None:
    data = small_company(fake, keys)
    data.ensure_seeded("acme")
    fake.hset(keys.projects("acme"), "late", "{}")
    erp = SandboxErp(fake, keys, "acme")
    assert len(erp.job_costs("late", None, None).items) == 10
    with pytest.raises(UnknownErpObject, match="no job 'nope'"):
        erp.job_costs("nope", None, None)


def test_scripted_faults_fail_the_next_calls_then_recover(
    fake: redis.Redis, keys: KeySpace
) -> None:
    data = small_company(fake, keys, fail_kind="rate_limited", retry_after=2.5)
    data.fail_next("acme", 2)
    erp = SandboxErp(fake, keys, "acme")
    for _ in range(2):
        with pytest.raises(RateLimited) as caught:
            erp.jobs(None, None)
        assert caught.value.retry_after == 2.5
    assert erp.jobs(None, None).items
    assert fake.llen(keys.erp_calls("acme")) == 3


def test_random_transient_faults_follow_the_rate(fake: redis.Redis, keys: KeySpace) -> None:
    small_company(fake, keys, transient_rate=0.5)
    erp = SandboxErp(fake, keys, "acme", rng=random.Random(7))
    failures = 0
    for _ in range(200):
        try:
            erp.jobs(None, None)
        except ErpServerError:
            failures += 1
    assert 60 < failures < 140


def test_bad_credentials_is_permanent(fake: redis.Redis, keys: KeySpace) -> None:
    small_company(fake, keys, permanent="bad_credentials")
    with pytest.raises(BadCredentials):
        SandboxErp(fake, keys, "acme").vendors(None, None)


def test_bad_configuration_is_refused(fake: redis.Redis, keys: KeySpace) -> None:
    data = small_company(fake, keys)
    with pytest.raises(InvalidInput, match="transient_rate"):
        data.configure("acme", transient_rate=2)
    with pytest.raises(InvalidInput, match="colour"):
        data.configure("acme", colour="red")
