"""Tenants stay apart on real processes: a real ``celery worker`` runs a slow sandbox sync of
``acme`` while an admin removes the company and adds it again under the same id (real
``manage.py`` subprocesses). The old tenant's run is recorded ``failed`` ("company removed
during the run"), and the new tenant gets nothing of it: no watermark, no alert state, no
fleet summary, no place under its concurrency cap, no lock, no alert. Every wait is on
something the processes did."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.alerts import AlertEvent
from config.keys import KeySpace
from erp_sync.alerts.rules import AlertRules
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database, RunLog
from erp_sync.runs.records import RunRecords
from erp_sync.runs.tenant import GONE_ERROR, PROJECT_GONE_ERROR
from tests.support.erp import small_company
from tests.support.procs import stop_all, wait_until, worker
from tests.support.receiver import Receiver, start_receiver
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs
from tests.support.stack import ProcStack

pytestmark = [pytest.mark.integration, pytest.mark.processes]
FINISHED = re.compile(r"finished company=acme project=- sync=vendors .*task_id=(\S+)")


@pytest.fixture
def stack(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[ProcStack]:
    s = ProcStack(
        env={
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_SETTINGS_WAIT_SECONDS": "0",
            "ERP_SYNC_ALERT_RETRY_SECONDS": "0.2",
        },
        client=redis_server.client(),
        keys=KeySpace(prefix),
        logs=tmp_path,
    )
    yield s
    stop_all(s.procs)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


def test_a_sync_running_while_its_company_is_removed_and_added_again_leaves_nothing_to_it(
    stack: ProcStack, receiver: Receiver, db: Database
) -> None:
    client, keys = stack.client, stack.keys
    # 30 vendors, 10 a page, 2.5 s a call: the run is still in flight when this test sees it
    # running, however long the sync-now process takes to exit on a loaded machine; the
    # removal and the re-add below are in-process (milliseconds).
    small_company(client, keys, "acme", projects=()).configure("acme", latency_ms=2500)
    stack.procs.append(worker("worker", stack.env, stack.logs, queues="company,project,alerts"))
    stack.manage("sync-now", "acme", "vendors", "--as", "alice")
    history = RunRecords(client, keys)
    wait_until(
        lambda: [r for r in recent_runs(history, "acme") if r.status == "running"],
        60,
        f"the sync never started:\n{stack.procs[0].output()[-3000:]}",
    )
    (old,) = recent_runs(history, "acme")
    # Read before the removal: the run may notice it while the command is still exiting.
    removing_at = stack.now()
    store = SettingsStore(client, keys)
    Lifecycle(store).remove_company("acme", "alice")
    store.add_company("acme", "xero", admin="alice")
    AlertRules(store).add(
        "acme", "alice", url=receiver.url, events=[AlertEvent.FAILED], failures=1, secret=None
    )
    wait_until(
        lambda: old.task_id in FINISHED.findall(stack.procs[0].output()),
        60,
        f"the old run never finished:\n{stack.procs[0].output()[-3000:]}",
    )
    wait_until(lambda: client.llen(keys.queue("alerts")) == 0, 30, "alerts still queued")
    final = history.get("acme", old.task_id)
    assert final is not None and (final.status, final.error) == ("failed", GONE_ERROR)
    assert final.finished_at is not None and final.finished_at.timestamp() > removing_at
    assert [(r.status, r.error) for r in RunLog(db).recent("acme")] == [("failed", GONE_ERROR)]
    # Nothing of the old tenant's run for the company added under its id.
    assert client.exists(keys.cursor("acme", "vendors", None)) == 0
    assert client.exists(keys.alert_state("acme"), keys.alert_outbox("acme")) == 0
    assert not [v for v in client.hvals(keys.last_runs) if old.task_id in str(v)]
    assert client.zscore(keys.running("acme"), old.task_id) is None
    assert client.exists(keys.run_lock("acme", "vendors", None)) == 0
    assert receiver.got == []  # the new tenant's rule was not alerted for the old run


def test_a_job_cost_sync_running_while_its_project_is_removed_and_added_again_stores_nothing(
    stack: ProcStack, db: Database
) -> None:
    client, keys = stack.client, stack.keys
    # Six calls of 1.5 s: still in flight once seen running (see above).
    small_company(client, keys, "acme", projects=("p1",)).configure("acme", latency_ms=1500)
    stack.procs.append(worker("worker", stack.env, stack.logs))
    stack.manage("sync-now", "acme", "job_costs", "--as", "alice", "--project", "p1")
    history = RunRecords(client, keys)
    wait_until(
        lambda: [r for r in recent_runs(history, "acme") if r.status == "running"],
        60,
        f"the sync never started:\n{stack.procs[0].output()[-3000:]}",
    )
    (old,) = recent_runs(history, "acme")
    removing_at = stack.now()
    store = SettingsStore(client, keys)
    Lifecycle(store).remove_project("acme", "p1", "alice")
    store.add_project("acme", "p1")
    wait_until(
        lambda: (r := history.get("acme", old.task_id)) is not None and r.status != "running",
        60,
        f"the old run never finished:\n{stack.procs[0].output()[-3000:]}",
    )
    final = history.get("acme", old.task_id)
    assert final is not None and (final.status, final.error) == ("failed", PROJECT_GONE_ERROR)
    assert final.finished_at is not None and final.finished_at.timestamp() > removing_at
    assert client.exists(keys.cursor("acme", "job_costs", "p1")) == 0
    assert client.exists(keys.run_lock("acme", "job_costs", "p1")) == 0
    wait_until(lambda: RunLog(db).recent("acme"), 10, "no history row")
    assert [r.status for r in RunLog(db).recent("acme")] == ["failed"]
