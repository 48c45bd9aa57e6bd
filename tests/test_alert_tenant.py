"""A webhook delivery belongs to the tenant whose incident queued it, not to the company id.

``company remove`` then ``company add`` under the same id makes a new tenant; a delivery (or a
retry) of the old one still in the broker must neither post (even to a rule of the same id) nor
write the new tenant's delivery log. The delivery carries the company's stamp (its record's
``created_at`` as stored) in its message; the log write checks it in the same atomic step
(``list_push_if.lua``) and the POST checks it just before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from config.alerts import AlertEvent, AlertRule
from config.keys import KeySpace
from config.models import tenant_stamp
from erp_sync.alerts.deliver import deliver_once, deliveries
from erp_sync.alerts.evaluate import TENANT_FIELD, Evaluator, RunOutcome
from erp_sync.alerts.rules import AlertRules
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.store import SettingsStore
from tests.support.erp import small_company
from tests.support.receiver import Receiver, start_receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


def old_tenant(real: redis.Redis, keys: KeySpace, url: str) -> tuple[AlertRule, dict[str, Any]]:
    """acme with a rule, and a failed alert of it queued with acme's stamp (as the evaluator
    queues it)."""
    small_company(real, keys, projects=())
    rule = AlertRules(SettingsStore(real, keys)).add(
        "acme", "alice", url=url, events=[AlertEvent.FAILED], failures=1, secret=None
    )
    sent: list[dict[str, Any]] = []
    outcome = RunOutcome("acme", "vendors", None, "failed", "boom", "s1")
    Evaluator(real, keys, 3600, lambda _r, m: sent.append(m)).on_run(outcome)
    (message,) = sent
    return rule, message


def again(real: redis.Redis, keys: KeySpace) -> None:
    """acme removed and added again: a new tenant under the id."""
    store = SettingsStore(real, keys)
    Lifecycle(store).remove_company("acme", "alice")
    store.add_company("acme", "xero", admin="alice")


def test_a_queued_alert_carries_its_tenants_stamp_and_posts_without_it(
    real: redis.Redis, keys: KeySpace, receiver: Receiver
) -> None:
    rule, message = old_tenant(real, keys, receiver.url)
    assert message[TENANT_FIELD] == tenant_stamp(str(real.get(keys.company("acme"))))
    assert deliver_once(real, keys, "acme", rule.id, message, 1, True, 2.0) == "delivered"
    (got,) = receiver.got
    assert TENANT_FIELD not in got.body and got.body["delivery"] == message["delivery"]
    assert [e.outcome for e in deliveries(real, keys, "acme")] == ["delivered"]


def test_the_old_tenants_delivery_writes_nothing_to_the_new_tenants_log(
    real: redis.Redis, keys: KeySpace, receiver: Receiver
) -> None:
    rule, message = old_tenant(real, keys, receiver.url)
    again(real, keys)
    assert deliver_once(real, keys, "acme", rule.id, message, 2, False, 2.0) == "dropped"
    assert deliveries(real, keys, "acme") == []
    assert not real.exists(keys.alert_log("acme")) and receiver.got == []


def test_the_old_tenants_delivery_is_not_posted_to_a_new_rule_of_the_same_id(
    real: redis.Redis, keys: KeySpace, receiver: Receiver
) -> None:
    rule, message = old_tenant(real, keys, receiver.url)
    again(real, keys)
    # The new tenant happens to hold a rule under the same id (to the same receiver).
    real.hset(keys.alerts("acme"), rule.id, rule.model_dump_json())
    assert deliver_once(real, keys, "acme", rule.id, message, 1, False, 2.0) == "dropped"
    assert receiver.got == [] and deliveries(real, keys, "acme") == []


def test_a_delivery_without_a_stamp_is_still_guarded_by_the_company(
    real: redis.Redis, keys: KeySpace, receiver: Receiver
) -> None:
    """A message queued before deliveries carried a stamp (or ``alert test``'s): the company
    must exist for its log, as before."""
    rule, message = old_tenant(real, keys, receiver.url)
    del message[TENANT_FIELD]
    assert deliver_once(real, keys, "acme", rule.id, message, 1, True, 2.0) == "delivered"
    Lifecycle(SettingsStore(real, keys)).remove_company("acme", "alice")
    assert deliver_once(real, keys, "acme", rule.id, message, 2, True, 2.0) == "dropped"
    assert not real.exists(keys.alert_log("acme"))
