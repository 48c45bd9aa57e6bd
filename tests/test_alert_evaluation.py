"""A finished run's alert evaluation is at least once and counts each run once.

The run is committed in Redis (``run_finish.lua``: record, executed marker) before it is
evaluated for alerts; a redelivery after that point sees the executed marker and runs nothing.
So the commit point also leaves the outcome waiting in the company's alert outbox, the
evaluation takes it out with the incident it writes, and the periodic check evaluates what
waited past the grace. Evaluating one run twice (the worker and the check, or a redelivery)
must not count two failures.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import redis

from config.alerts import AlertEvent, AlertRule
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.alerts.evaluate import Evaluator, RunOutcome, redis_now
from erp_sync.alerts.outbox import GRACE
from erp_sync.alerts.rules import AlertRules
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.runner import Runner
from tests.support.erp import small_company

pytestmark = pytest.mark.integration


class Sent(list[tuple[str, dict[str, Any]]]):
    def __call__(self, rule: AlertRule, message: dict[str, Any]) -> None:
        self.append((rule.id, message))


def with_rule(real: redis.Redis, keys: KeySpace, failures: int = 1) -> AlertRule:
    """acme, whose ERP refuses its credentials (every sync fails), with a webhook rule."""
    small_company(real, keys, projects=()).configure("acme", permanent="bad_credentials")
    return AlertRules(SettingsStore(real, keys)).add(
        "acme",
        "alice",
        url="http://127.0.0.1:9/hook",
        events=[AlertEvent.FAILED, AlertEvent.RECOVERED],
        failures=failures,
        secret=None,
    )


def failed(task_id: str) -> RunOutcome:
    return RunOutcome("acme", "vendors", None, "failed", "boom", "s1", task_id=task_id)


def test_evaluating_the_same_run_twice_counts_it_once(real: redis.Redis, keys: KeySpace) -> None:
    with_rule(real, keys, failures=2)
    sent = Sent()
    evaluator = Evaluator(real, keys, 3600, sent)
    assert evaluator.on_run(failed("t1")) == []
    assert evaluator.on_run(failed("t1")) == []  # the same run again: still one failure
    assert sent == []
    assert evaluator.on_run(failed("t2")) == [AlertEvent.FAILED]  # the second failure alerts
    assert evaluator.on_run(failed("t2")) == [] and len(sent) == 1


def failing_run(real: redis.Redis, keys: KeySpace, db: Database, task_id: str) -> Runner:
    """A real run of acme's vendors sync that fails (the ERP refuses the credentials) and is
    finished, but never evaluated: what a worker killed right after the finish leaves."""
    runner = Runner(real, keys, rng=random.Random(1), db=db)
    d = Delivery(task_id=task_id, company="acme", kind=SyncKind.VENDORS, project=None, slot="s1")
    outcome = runner.execute(d)
    assert outcome.record is not None and outcome.record.status == "failed"
    return runner


def test_a_finished_run_waits_in_the_outbox_and_the_periodic_check_evaluates_it_once(
    real: redis.Redis, keys: KeySpace, db: Database
) -> None:
    rule = with_rule(real, keys)
    failing_run(real, keys, db, "t1")
    raw = real.hget(keys.alert_outbox("acme"), "run:t1")
    assert raw is not None, "the finish left nothing to evaluate: a killed worker loses the alert"
    waiting = json.loads(str(raw))
    assert waiting["run"]["status"] == "failed" and waiting["run"]["company_stamp"]
    sent = Sent()
    evaluator = Evaluator(real, keys, 3600, sent)
    assert evaluator.resend_pending(now=redis_now(real)) == 0 and sent == []  # within the grace
    evaluator.resend_pending(now=redis_now(real) + GRACE + 1)
    assert [(a, m["event"]) for a, m in sent] == [(rule.id, "failed")]
    assert not real.hexists(keys.alert_outbox("acme"), "run:t1")
    evaluator.resend_pending(now=redis_now(real) + GRACE + 1)
    # The worker's own evaluation, late (it was only slow): counted already.
    assert evaluator.on_run(failed("t1")) == [] and len(sent) == 1


def test_a_redelivered_duplicate_evaluates_its_waiting_run_at_once(
    real: redis.Redis, keys: KeySpace, db: Database
) -> None:
    with_rule(real, keys)
    runner = failing_run(real, keys, db, "t1")
    d = Delivery(task_id="t1", company="acme", kind=SyncKind.VENDORS, project=None, slot="s1")
    assert runner.execute(d).duplicate
    sent = Sent()
    assert Evaluator(real, keys, 3600, sent).evaluate_pending("acme", "t1") == [AlertEvent.FAILED]
    assert Evaluator(real, keys, 3600, sent).evaluate_pending("acme", "t1") == []
    assert len(sent) == 1


def test_a_company_without_alert_rules_leaves_nothing_waiting(
    real: redis.Redis, keys: KeySpace, db: Database
) -> None:
    small_company(real, keys, projects=()).configure("acme", permanent="bad_credentials")
    failing_run(real, keys, db, "t1")
    assert not real.exists(keys.alert_outbox("acme"))
    assert real.zscore(keys.alert_outbox_due, "acme") is None


def test_a_redis_error_during_the_evaluation_leaves_the_run_for_the_periodic_check(
    real: redis.Redis, keys: KeySpace, db: Database
) -> None:
    """What ``tasks.evaluate_alerts`` logs and swallows: the outcome still waits."""
    with_rule(real, keys)
    failing_run(real, keys, db, "t1")
    down = redis.Redis(port=1, socket_connect_timeout=0.5)  # nothing listens on port 1
    with pytest.raises(redis.ConnectionError):
        Evaluator(down, keys, 3600, Sent()).on_run(failed("t1"))
    sent = Sent()
    Evaluator(real, keys, 3600, sent).resend_pending(now=redis_now(real) + GRACE + 1)
    assert [m["event"] for _, m in sent] == ["failed"]


def test_an_unreadable_waiting_outcome_is_dropped(real: redis.Redis, keys: KeySpace) -> None:
    with_rule(real, keys)
    run = {"task_id": "t1", "company": "acme", "kind": "no such kind", "status": "failed"}
    real.hset(keys.alert_outbox("acme"), "run:t1", json.dumps({"run": run, "at": 0}))
    real.zadd(keys.alert_outbox_due, {"acme": 0})
    Evaluator(real, keys, 3600, Sent()).resend_pending()
    assert not real.exists(keys.alert_outbox("acme"))
