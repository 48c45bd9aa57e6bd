"""Housekeeping tasks sent by beat's app schedule (``beat_schedule`` in the Celery config).

``prune_history`` keeps the run history by age: runs that started more than
``ERP_SYNC_HISTORY_DAYS`` ago are deleted from the database; first it writes the final run
records that still wait in Redis because the database refused them when their runs ended
(``erp_sync.runs.outbox``; the next run that writes its own row does it too).
``archive_audit`` moves audit, security-log and operator-log entries beyond the newest
``ERP_SYNC_AUDIT_KEEP`` of each list from Redis into the database (``erp_sync/db/audit.py``).
The leader sends each hourly (at most once per hour fleet-wide, ``erp_sync/beat/static.py``)
on the ``alerts`` queue; running either twice is harmless.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import redis
from celery import Task

from config.env import get_settings
from config.keys import KeySpace
from erp_sync.db import RunLog, database
from erp_sync.db.audit import AuditArchive, archive_all
from erp_sync.infra.celery_config import ARCHIVE_AUDIT_TASK, PRUNE_HISTORY_TASK
from erp_sync.infra.redis_client import connect
from erp_sync.runs.outbox import RunOutbox
from worker import app

log = logging.getLogger("erp_sync.worker")


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return connect(get_settings().redis_url, check=False)


@app.task(
    name=PRUNE_HISTORY_TASK,
    bind=True,
    acks_late=True,  # type: ignore[untyped-decorator]
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=5,
)
def prune_history(self: Task) -> dict[str, Any]:
    """Delete runs older than the history's retention (``ERP_SYNC_HISTORY_DAYS``)."""
    env = get_settings()
    days = env.history_days
    runs = RunLog(database())
    outbox = RunOutbox(_client(), KeySpace(env.key_prefix))
    caught_up = 0
    while written := outbox.flush(runs):  # 0 once empty, or while the database refuses
        caught_up += written
    before = datetime.now(UTC) - timedelta(days=days)
    deleted = runs.prune(before)
    log.info(
        "pruned history: %s runs started before %s (%s days kept)",
        deleted,
        before.isoformat(timespec="seconds"),
        days,
    )
    return {"deleted": deleted, "before": before.isoformat(), "caught_up": caught_up}


@app.task(
    name=ARCHIVE_AUDIT_TASK,
    bind=True,
    acks_late=True,  # type: ignore[untyped-decorator]
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=5,
)
def archive_audit(self: Task) -> dict[str, int]:
    """Move audit entries beyond the newest ``ERP_SYNC_AUDIT_KEEP`` per list to the database."""
    env = get_settings()
    moved = archive_all(
        _client(), KeySpace(env.key_prefix), AuditArchive(database()), env.audit_keep
    )
    log.info(
        "archived audit: %s entries beyond the newest %s per list (audit=%s denied=%s operator=%s)",
        sum(moved.values()),
        env.audit_keep,
        moved["audit"],
        moved["denied"],
        moved["operator"],
    )
    return moved
