"""Alerts are delivered at least once and posted once: the outbox, the delivery claim, and
retries that wait under the broker's visibility timeout (on a real redis-server)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from config.alerts import AlertEvent, AlertRule
from config.env import Settings
from config.keys import KeySpace
from erp_sync.alerts import retries
from erp_sync.alerts.evaluate import Evaluator, RunOutcome, redis_now
from erp_sync.alerts.outbox import GRACE as OUTBOX_GRACE
from erp_sync.alerts.rules import AlertRules
from erp_sync.control.store import SettingsStore
from tests.support.erp import small_company

pytestmark = pytest.mark.integration
FAILED = RunOutcome("acme", "vendors", None, "failed", "ERP said no", "2030-01-01T00:00:00Z")


class Died(BaseException):
    """The worker's death between recording the incident and queueing its delivery."""


def die(rule: AlertRule, message: dict[str, Any]) -> None:
    raise Died


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, rule: AlertRule, message: dict[str, Any]) -> None:
        self.messages.append(message)


@pytest.fixture
def rule(real: redis.Redis, keys: KeySpace) -> AlertRule:
    small_company(real, keys, projects=())
    return AlertRules(SettingsStore(real, keys)).add(
        "acme",
        "alice",
        url="http://127.0.0.1:9/hook",
        events=[AlertEvent.FAILED],
        failures=1,
        secret=None,
    )


def test_a_delivery_whose_sender_died_after_the_incident_is_queued_again_once(
    real: redis.Redis, keys: KeySpace, rule: AlertRule
) -> None:
    with pytest.raises(Died):
        Evaluator(real, keys, 3600, die).on_run(FAILED)
    assert real.hget(keys.alert_state("acme"), "vendors:-") is not None  # the incident
    (waiting,) = real.hkeys(keys.alert_outbox("acme"))  # and its delivery, in one MULTI
    sent = Sent()
    ev = Evaluator(real, keys, 3600, sent)
    now = redis_now(real)
    assert ev.resend_pending(now) == 0  # its sender may still be queueing it
    assert ev.resend_pending(now + OUTBOX_GRACE + 1) == 1
    assert [m["delivery"] for m in sent.messages] == [waiting]
    assert sent.messages[0]["event"] == "failed" and sent.messages[0]["alert"] == rule.id
    assert real.exists(keys.alert_outbox("acme")) == 0
    assert real.zscore(keys.alert_outbox_due, "acme") is None
    assert ev.resend_pending(now + 10 * OUTBOX_GRACE) == 0 and len(sent.messages) == 1
    ev.on_run(FAILED)  # the same incident: nothing more to send
    assert len(sent.messages) == 1


def test_a_delivery_queued_at_once_leaves_nothing_waiting(
    real: redis.Redis, keys: KeySpace, rule: AlertRule
) -> None:
    sent = Sent()
    ev = Evaluator(real, keys, 3600, sent)
    assert ev.on_run(FAILED) == [AlertEvent.FAILED]
    assert real.exists(keys.alert_outbox("acme")) == 0
    assert ev.resend_pending(redis_now(real) + 2 * OUTBOX_GRACE) == 0
    assert len(sent.messages) == 1 and real.zscore(keys.alert_outbox_due, "acme") is None


def test_a_waiting_delivery_of_a_rule_removed_meanwhile_is_dropped(
    real: redis.Redis, keys: KeySpace, rule: AlertRule
) -> None:
    with pytest.raises(Died):
        Evaluator(real, keys, 3600, die).on_run(FAILED)
    AlertRules(SettingsStore(real, keys)).remove("acme", rule.id, "alice")
    sent = Sent()
    assert Evaluator(real, keys, 3600, sent).resend_pending(redis_now(real) + 60) == 0
    assert sent.messages == [] and real.exists(keys.alert_outbox("acme")) == 0


def test_the_first_task_id_to_claim_a_delivery_posts_it_and_no_other(
    real: redis.Redis, keys: KeySpace
) -> None:
    assert retries.claim(real, keys, "d1", "task-a", 60)
    assert retries.claim(real, keys, "d1", "task-a", 60)  # its own retries and redeliveries
    assert not retries.claim(real, keys, "d1", "task-b", 60)  # the outbox's second copy
    assert retries.claim(real, keys, "d2", "task-b", 60)
    assert 0 < real.ttl(keys.alert_claim("d1")) <= 60


def test_no_retry_waits_past_the_visibility_timeout_with_production_settings() -> None:
    env = Settings()
    longest = retries.cap(env.visibility_timeout, env.task_time_limit)
    waits = [retries.countdown(a, env.alert_retry_seconds, longest) for a in range(1, 21)]
    assert max(waits) == longest < env.visibility_timeout
    assert waits[:5] == [2.0, 4.0, 8.0, 16.0, 32.0]  # the doubling is unchanged below the cap
    # Uncapped, the wait after attempt 12 would have been 4,096 s, past the hour.
    assert env.alert_retry_seconds * 2**11 > env.visibility_timeout
    ttl = retries.claim_ttl(20, longest, env.alert_timeout_seconds)
    assert ttl > 20 * longest  # the claim outlives the longest retry chain


def test_a_stale_alert_whose_sender_died_is_queued_again_too(
    real: redis.Redis, keys: KeySpace
) -> None:
    small_company(real, keys, projects=())
    AlertRules(SettingsStore(real, keys)).add(
        "acme",
        "alice",
        url="http://127.0.0.1:9/hook",
        events=[AlertEvent.STALE],
        failures=1,
        secret=None,
    )
    Evaluator(real, keys, 3600, die).seed_deadlines("acme")  # as ``alert add`` does
    later = redis_now(real) + 3 * 3600  # past the vendors and jobs deadlines (two hours)
    with pytest.raises(Died):
        Evaluator(real, keys, 3600, die).check_stale(later)
    assert real.hlen(keys.alert_outbox("acme")) == 1  # staged with the stale incident
    sent = Sent()
    ev = Evaluator(real, keys, 3600, sent)
    assert ev.resend_pending(later + OUTBOX_GRACE + 1) == 1
    assert [m["event"] for m in sent.messages] == ["stale"]
    ev.check_stale(later)  # the other sync's stale alert: queued at once, nothing waits
    assert [m["event"] for m in sent.messages] == ["stale", "stale"]
    assert real.exists(keys.alert_outbox("acme")) == 0
