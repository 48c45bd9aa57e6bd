"""Alert tasks (queue ``alerts``): webhook delivery with retries, and the stale-sync check.

Thin wrappers over ``erp_sync.alerts``: the delivery task reads the rule (URL, secret) from
Redis itself, so its arguments hold only the company, the alert id and the JSON payload. A
delivery is posted by the first task id that claims its delivery id (a copy the outbox queued
again posts nothing), and its retries wait at most under the broker's visibility timeout
(``erp_sync.alerts.retries``). The periodic check also queues again the deliveries whose
sender died between recording the incident and queueing them, and evaluates the finished runs
whose worker died before evaluating them (``Evaluator.resend_pending``).

At most two deliveries of one company (``ERP_SYNC_ALERT_COMPANY_CONCURRENCY``) are posted at
once across the fleet: one over the cap re-queues itself after about a
second, its ``waits`` counted in its kwargs (so it spends no attempt, as a sync's deferrals do)
and nothing logged, leaving the worker's slot to other companies and to housekeeping.
"""

from __future__ import annotations

import logging
import random
from functools import lru_cache
from typing import Any

import redis
from celery import Task

from config.env import get_settings
from config.keys import KeySpace
from erp_sync.alerts import inflight, retries
from erp_sync.alerts.deliver import deliver_once
from erp_sync.alerts.evaluate import Evaluator
from erp_sync.alerts.inflight import DeliverySlots, company_cap
from erp_sync.infra.redis_client import connect
from tasks import send_alert
from worker import app

log = logging.getLogger("erp_sync.alerts")
DELIVER = "tasks.alerts.deliver"
CHECK_STALE = "tasks.alerts.check_stale"


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return connect(get_settings().redis_url, check=False)


@app.task(  # type: ignore[untyped-decorator]
    name=DELIVER, bind=True, acks_late=True, max_retries=None
)
def deliver(
    self: Task, *, company: str, alert: str, message: dict[str, Any], waits: int = 0
) -> str:
    """Post one alert; on failure retry after ``ALERT_RETRY_SECONDS * 2**(attempt-1)``, capped
    under the visibility timeout; a delivery another task id claimed is not posted again; one
    over its company's cap of deliveries in flight waits (``waits``: re-queues that were not
    attempts)."""
    env = get_settings()
    attempt = int(self.request.retries or 0) - waits + 1
    final = attempt >= env.alert_attempts
    keys = KeySpace(env.key_prefix)
    longest = retries.cap(env.visibility_timeout, env.task_time_limit)
    delivery = str(message.get("delivery"))
    ttl = retries.claim_ttl(env.alert_attempts, longest, env.alert_timeout_seconds)
    if not retries.claim(_client(), keys, delivery, str(self.request.id), ttl):
        log.info(
            "alert company=%s alert=%s delivery=%s outcome=duplicate (another task posts it)",
            company,
            alert,
            delivery,
        )
        return "duplicate"
    holder = str(self.request.id)
    # A lease past the whole attempt (bounded by the alert timeout), so a live post keeps it.
    slots = DeliverySlots(
        _client(), keys, company, company_cap(env), lease=2 * env.alert_timeout_seconds + 5
    )
    if not slots.take(holder):
        log.info(
            "alert company=%s alert=%s delivery=%s outcome=waiting (company at its cap of %d "
            "deliveries in flight)",
            company,
            alert,
            delivery,
            slots.cap,
        )
        raise self.retry(
            countdown=inflight.RETRY_AFTER * (1 + random.random() / 2),
            max_retries=None,
            kwargs={**self.request.kwargs, "waits": waits + 1},
        )
    try:
        outcome = deliver_once(
            _client(),
            keys,
            company,
            alert,
            message,
            attempt,
            final,
            env.alert_timeout_seconds,
        )
    finally:
        slots.give_back(holder)
    log.info(
        "alert company=%s alert=%s event=%s delivery=%s attempt=%d outcome=%s",
        company,
        alert,
        message.get("event"),
        message.get("delivery"),
        attempt,
        outcome,
    )
    if outcome == "retrying":
        raise self.retry(
            countdown=retries.countdown(attempt, env.alert_retry_seconds, longest),
            kwargs={**self.request.kwargs, "waits": waits},
        )
    return outcome


@app.task(name=CHECK_STALE)  # type: ignore[untyped-decorator]
def check_stale() -> int:
    """Queue again the deliveries whose sender died before queueing them and evaluate the run
    outcomes whose worker died before evaluating them, then alert the syncs whose no-success
    deadline has passed (reads of what is due only)."""
    env = get_settings()
    evaluator = Evaluator(_client(), KeySpace(env.key_prefix), env.seconds_per_hour, send_alert)
    resent = evaluator.resend_pending()
    if resent:
        log.info("alert deliveries queued again (their sender died first): %s", resent)
    found = evaluator.check_stale()
    if found:
        log.info("stale syncs alerted: %s", " ".join(found))
    return len(found)
