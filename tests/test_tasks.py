"""The Celery task layer: what it does with the runner's outcome and with its own Redis failing.

In-process, against a real redis-server of the test's own (so the test can stop it), with the
task's request pushed by hand: no broker round trip is needed to see what the task raises.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery.exceptions import Reject, Retry

import tasks
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.throttle.ratelimit import CompanyLimit, set_company_limit
from tasks.company import refresh_vendors
from tests.support.erp import small_company
from tests.support.redisproc import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def world(own_redis: RedisServer, env: pytest.MonkeyPatch, keys: KeySpace) -> Iterator[redis.Redis]:
    env.setenv("ERP_SYNC_REDIS_URL", own_redis.url)
    client = own_redis.client()
    small_company(client, keys)
    tasks.runner.cache_clear()
    refresh_vendors.push_request(
        id="sync:acme:vendors:-:1", retries=0, kwargs={"company": "acme", "slot": "x"}
    )
    yield client
    refresh_vendors.pop_request()
    tasks.runner.cache_clear()


def test_a_redis_outage_hands_the_message_back_instead_of_failing_it(
    world: redis.Redis, own_redis: RedisServer
) -> None:
    tasks.runner()  # built while Redis answers, as in a running worker
    own_redis.kill()
    with pytest.raises(Reject) as caught:
        tasks.perform(refresh_vendors, SyncKind.VENDORS, "acme", "x", "schedule")
    assert caught.value.requeue  # back to the queue (or the visibility sweep), never acked


def test_a_deferral_is_a_celery_retry_that_carries_its_count_and_spends_no_retry(
    world: redis.Redis, keys: KeySpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_company_limit(world, keys, "acme", CompanyLimit(concurrency=1))
    world.zadd(keys.running("acme"), {"another-task": 10**15})
    sent: dict[str, object] = {}

    def retry(**options: object) -> Retry:
        sent.update(options)
        return Retry("deferred")

    monkeypatch.setattr(refresh_vendors, "retry", retry)
    with pytest.raises(Retry):
        tasks.perform(refresh_vendors, SyncKind.VENDORS, "acme", "x", "schedule", deferrals=2)
    assert sent["max_retries"] is None
    assert sent["kwargs"] == {"company": "acme", "slot": "x", "deferrals": 3, "ticket": None}
    countdown = sent["countdown"]
    assert isinstance(countdown, float) and 0 < countdown <= 16.5
