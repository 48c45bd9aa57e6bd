"""Alert tasks (queue ``alerts``): webhook delivery with retries, and the stale-sync check.

Thin wrappers over ``erp_sync.alerts``: the delivery task reads the rule (URL, secret) from
Redis itself, so its arguments hold only the company, the alert id and the JSON payload.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import redis
from celery import Task

from config.env import get_settings
from config.keys import KeySpace
from erp_sync.alerts.deliver import deliver_once
from erp_sync.alerts.evaluate import Evaluator
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
def deliver(self: Task, *, company: str, alert: str, message: dict[str, Any]) -> str:
    """Post one alert; on failure retry after ``ALERT_RETRY_SECONDS * 2**(attempt-1)``."""
    env = get_settings()
    attempt = int(self.request.retries or 0) + 1
    final = attempt >= env.alert_attempts
    outcome = deliver_once(
        _client(),
        KeySpace(env.key_prefix),
        company,
        alert,
        message,
        attempt,
        final,
        env.alert_timeout_seconds,
    )
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
        raise self.retry(countdown=env.alert_retry_seconds * 2 ** (attempt - 1))
    return outcome


@app.task(name=CHECK_STALE)  # type: ignore[untyped-decorator]
def check_stale() -> int:
    """Alert the syncs whose no-success deadline has passed (a read of due deadlines only)."""
    env = get_settings()
    found = Evaluator(
        _client(), KeySpace(env.key_prefix), env.seconds_per_hour, send_alert
    ).check_stale()
    if found:
        log.info("stale syncs alerted: %s", " ".join(found))
    return len(found)
