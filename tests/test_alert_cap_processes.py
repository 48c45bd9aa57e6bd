"""One company's slow webhook receivers cannot fill the alerts workers (real processes).

A real alerts worker with 4 threads; a company with 4 rules on a loopback receiver that trickles
its answer (no read timeout fires) and holds every delivery until the test releases it, under
the longest alert timeout. Before the per-company cap, its 4 deliveries took all 4 threads and
another company's alert waited until they ended. With the cap (2 by default), at most 2 of its
deliveries are posted at once, the others re-queue themselves, and the other company's alert
arrives while the slow ones are still held. The deliveries that waited spend no attempt (one
attempt is allowed here) and are logged once each, when posted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.alerts import AlertEvent, AlertRule
from config.keys import KeySpace
from config.models import tenant_stamp
from erp_sync.alerts.deliver import deliveries
from erp_sync.alerts.evaluate import RunOutcome, payload, redis_now
from erp_sync.alerts.inflight import DEFAULT_CAP
from erp_sync.alerts.rules import AlertRules
from erp_sync.control.store import SettingsStore
from tests.support import procs
from tests.support.erp import Sender, small_company
from tests.support.redisproc import RedisServer
from tests.support.trickle import TrickleReceiver, start_trickle_receiver

pytestmark = [pytest.mark.integration, pytest.mark.processes]
THREADS = 4
SLOW_RULES = 4


@pytest.fixture
def slow() -> Iterator[TrickleReceiver]:
    r = start_trickle_receiver(hold=60)
    yield r
    r.close()


@pytest.fixture
def fast() -> Iterator[TrickleReceiver]:
    r = start_trickle_receiver()
    r.release()  # answers at once
    yield r
    r.close()


def rule(real: redis.Redis, keys: KeySpace, company: str, url: str) -> AlertRule:
    return AlertRules(SettingsStore(real, keys)).add(
        company, "alice", url=url, events=[AlertEvent.FAILED], failures=1, secret=None
    )


def queue(sender: Sender, real: redis.Redis, keys: KeySpace, r: AlertRule) -> None:
    """Queue one ``failed`` delivery of ``r`` as the evaluator does (tenant stamp included)."""
    tenant = tenant_stamp(real.get(keys.company(r.company)))
    outcome = RunOutcome(r.company, "vendors", None, "failed", "boom", "s1")
    message = payload(r, AlertEvent.FAILED, outcome, redis_now(real), 1, tenant)
    kwargs = {"company": r.company, "alert": r.id, "message": message}
    sender.publisher.send("tasks.alerts.deliver", kwargs, uuid.uuid4().hex, "alerts")


def test_a_slow_tenant_holds_at_most_its_cap_and_another_tenants_alert_gets_through(
    real: redis.Redis,
    redis_server: RedisServer,
    keys: KeySpace,
    prefix: str,
    tmp_path: Path,
    slow: TrickleReceiver,
    fast: TrickleReceiver,
) -> None:
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_ALERT_TIMEOUT_SECONDS": "60",
        "ERP_SYNC_ALERT_ATTEMPTS": "1",
    }
    for company in ("slowco", "acme"):
        small_company(real, keys, company, projects=())
    slow_rules = [rule(real, keys, "slowco", slow.url) for _ in range(SLOW_RULES)]
    fast_rule = rule(real, keys, "acme", fast.url)
    worker = procs.worker("alerts", env, tmp_path, queues="alerts", concurrency=THREADS)
    sender = Sender(env)
    try:
        worker.wait_for(" ready.", 30)
        for r in slow_rules:
            queue(sender, real, keys, r)
        procs.wait_until(lambda: slow.held() >= DEFAULT_CAP, 30, "the slow deliveries never came")
        procs.wait_until(  # every slow one was taken from the queue (posted, or waiting)
            lambda: worker.output().count("Task tasks.alerts.deliver[") >= SLOW_RULES, 30
        )
        queue(sender, real, keys, fast_rule)
        procs.wait_until(
            lambda: fast.taken, 30, f"the other company's alert waited:\n{worker.output()[-2000:]}"
        )
        assert 1 <= slow.held() <= DEFAULT_CAP  # it came while the slow ones were still held
        assert len(slow.taken) == DEFAULT_CAP  # never more of them posted at once
        assert "outcome=waiting" in worker.output()
        slow.release()
        procs.wait_until(lambda: slow.ended() == SLOW_RULES, 60, "the waiting ones never posted")
        procs.wait_until(lambda: len(deliveries(real, keys, "slowco")) == SLOW_RULES, 10)
        log = deliveries(real, keys, "slowco")
        assert sorted((e.attempt, e.outcome) for e in log) == [(1, "delivered")] * SLOW_RULES
        assert real.zcard(keys.alert_slots("slowco")) == 0  # every place given back
    finally:
        sender.close()
        procs.stop_all([worker])
