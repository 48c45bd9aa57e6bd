"""Housekeeping on a real Celery worker that consumes only the ``alerts`` queue, each task sent
by name and routed by the app's configuration: the audit archive trims Redis to the keep and
fills ``audit_log``; the history pruning deletes runs older than ``ERP_SYNC_HISTORY_DAYS``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from config.env import get_settings
from config.keys import KeySpace
from config.models import RunRecord
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database, RunLog
from erp_sync.db.audit import AuditArchive
from erp_sync.infra.celery_config import ARCHIVE_AUDIT_TASK, PRUNE_HISTORY_TASK
from erp_sync.infra.publish import CeleryPublisher
from tests.support import procs
from tests.support.db import archived_count
from tests.support.redisproc import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.processes]


def test_a_real_worker_on_the_alerts_queue_archives_what_is_beyond_the_keep(
    real: redis.Redis,
    redis_server: RedisServer,
    prefix: str,
    keys: KeySpace,
    db: Database,
    tmp_path: Path,
) -> None:
    store = SettingsStore(real, keys, os_user="ops")
    store.add_company("acme", "viewpoint_vista", admin="alice")
    for i in range(79):
        store.grant("acme", f"user{i}", "read_only", actor="alice")
    before = store.audit("acme", 1000)
    env = procs.process_env(
        {
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_AUDIT_KEEP": "30",
        }
    )
    worker = procs.worker("alerts", env, tmp_path, queues="alerts", concurrency=1)
    publisher = CeleryPublisher(get_settings())
    try:
        worker.wait_for("ready")
        publisher.app.send_task(ARCHIVE_AUDIT_TASK)  # no queue given: the route names it
        worker.wait_for("archived audit: 50 entries", 30)
    finally:
        publisher.close()
        procs.stop_all([worker])
    assert real.llen(keys.audit("acme")) == 30
    archive = AuditArchive(db)
    assert archived_count(db, "audit", "acme") == 50
    assert archive.extend("audit", "acme", store.audit("acme", 1000), 1000)[0] == before


def test_a_real_worker_on_the_alerts_queue_prunes_runs_older_than_the_history_days(
    real: redis.Redis, redis_server: RedisServer, prefix: str, db: Database, tmp_path: Path
) -> None:
    """DESIGN.md: the history is kept by age (ERP_SYNC_HISTORY_DAYS), pruned by housekeeping
    on the `alerts` queue; here by a real worker, the task sent by name and routed by config."""
    log = RunLog(db)
    now = datetime.now(UTC)
    for n, age in enumerate((1, 5, 9, 12)):  # days
        started = now - timedelta(days=age)
        log.save(
            RunRecord(
                kind="vendors",
                company="acme",
                project=None,
                task_id=f"t{n}",
                scheduled_for=started.isoformat(),
                started_at=started,
            ).finish("succeeded", at=started + timedelta(seconds=1))
        )
    env = procs.process_env(
        {
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_HISTORY_DAYS": "7",
        }
    )
    worker = procs.worker("alerts", env, tmp_path, queues="alerts", concurrency=1)
    publisher = CeleryPublisher(get_settings())
    try:
        worker.wait_for("ready")
        publisher.app.send_task(PRUNE_HISTORY_TASK)  # no queue given: the route names it
        worker.wait_for("pruned history: 2 runs", 30)
    finally:
        publisher.close()
        procs.stop_all([worker])
    assert sorted(r.task_id for r in log.recent("acme", 10)) == ["t0", "t1"]
