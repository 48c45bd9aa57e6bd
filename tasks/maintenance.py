"""Housekeeping tasks sent by beat's app schedule (``beat_schedule`` in the Celery config).

``prune_history`` keeps the run history by age: runs that started more than
``ERP_SYNC_HISTORY_DAYS`` ago are deleted from the database. The leader sends it hourly (at most
once per hour fleet-wide, ``erp_sync/beat/static.py``); running it twice is harmless.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task

from config.env import get_settings
from erp_sync.celery_config import PRUNE_HISTORY_TASK
from erp_sync.db import RunLog, database
from worker import app

log = logging.getLogger("erp_sync.worker")


@app.task(name=PRUNE_HISTORY_TASK, bind=True, acks_late=True,  # type: ignore[untyped-decorator]
          autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def prune_history(self: Task) -> dict[str, Any]:
    """Delete runs older than the history's retention (``ERP_SYNC_HISTORY_DAYS``)."""
    days = get_settings().history_days
    before = datetime.now(UTC) - timedelta(days=days)
    deleted = RunLog(database()).prune(before)
    log.info("pruned history: %s runs started before %s (%s days kept)", deleted,
             before.isoformat(timespec="seconds"), days)
    return {"deleted": deleted, "before": before.isoformat()}
