"""A sync running while its company (or project) is removed writes nothing for it afterwards.

The runner in-process on a real redis-server (the run scripts' tenant check is Lua with cjson),
with the sandbox ERP wrapped so that the removal happens between two pages of the sync: the
run is recorded ``failed`` with the reason, and no watermark, summary, running-set entry or
alert state of it is left for a company added later under the same id.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest
import redis

from config.alerts import AlertEvent
from config.keys import KeySpace
from config.models import Company, RunRecord, SyncKind, now
from erp_sync.alerts.evaluate import Evaluator, RunOutcome
from erp_sync.alerts.rules import AlertRules
from erp_sync.connectors import Connector, connector_for
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database, RecordStore, RunLog
from erp_sync.infra import lua
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.keepalive import Heartbeat
from erp_sync.runs.locks import RunLock
from erp_sync.runs.runner import Runner
from erp_sync.runs.tenant import GONE_ERROR, PROJECT_GONE_ERROR, Tenant
from tests.support.erp import small_company
from tests.support.midway import Midway
from tests.support.procs import wait_until

pytestmark = pytest.mark.integration


def runner_with(
    client: redis.Redis, keys: KeySpace, db: Database, hook: Callable[[], object], after: int = 2
) -> Runner:
    def make(company: Company) -> Connector:
        return Midway(connector_for(client, keys, company), hook, after)

    return Runner(client, keys, rng=random.Random(1), connector=make, db=db)


def delivery(
    task_id: str, kind: SyncKind = SyncKind.VENDORS, project: str | None = None
) -> Delivery:
    return Delivery(task_id=task_id, company="acme", kind=kind, project=project, slot="s1")


def last_run_ids(client: redis.Redis, keys: KeySpace) -> str:
    return " ".join(str(v) for v in client.hvals(keys.last_runs))


@pytest.mark.parametrize("added_again", [False, True], ids=["removed", "removed_and_added"])
def test_a_sync_whose_company_is_removed_mid_run_stores_no_watermark_and_is_failed(
    real: redis.Redis, keys: KeySpace, db: Database, added_again: bool
) -> None:
    small_company(real, keys)  # 30 vendors, 10 a page: three pages
    store = SettingsStore(real, keys)

    def remove() -> None:
        Lifecycle(store).remove_company("acme", "alice")
        if added_again:  # a new tenant under the same id, before the old run ends
            store.add_company("acme", "xero")

    outcome = runner_with(real, keys, db, remove).execute(delivery("t1"))
    record = outcome.record
    assert record is not None and (record.status, record.error) == ("failed", GONE_ERROR)
    assert real.exists(keys.cursor("acme", "vendors", None)) == 0
    assert "t1" not in last_run_ids(real, keys)  # no fleet summary of the old tenant's run
    assert real.zscore(keys.running("acme"), "t1") is None
    assert real.exists(keys.run_lock("acme", "vendors", None)) == 0
    kept = RunLog(db).recent("acme")
    assert [(r.task_id, r.status, r.error) for r in kept] == [("t1", "failed", GONE_ERROR)]
    # Only the page written before the removal reached the database (10 of 30 vendors).
    assert len(RecordStore(db, "acme").all("vendors")) == 10


def test_a_job_cost_sync_whose_project_is_removed_mid_run_stores_no_watermark(
    real: redis.Redis, keys: KeySpace, db: Database
) -> None:
    small_company(real, keys, projects=("p1", "p2"))
    lifecycle = Lifecycle(SettingsStore(real, keys))
    outcome = runner_with(
        real, keys, db, lambda: lifecycle.remove_project("acme", "p1", "alice"), after=3
    ).execute(delivery("t1", SyncKind.JOB_COSTS, "p1"))
    record = outcome.record
    assert record is not None and (record.status, record.error) == ("failed", PROJECT_GONE_ERROR)
    assert real.exists(keys.cursor("acme", "job_costs", "p1")) == 0
    # The same sync of a project that stays is unaffected.
    other = runner_with(real, keys, db, lambda: None).execute(
        delivery("t2", SyncKind.JOB_COSTS, "p2")
    )
    assert other.record is not None and other.record.status == "succeeded"
    assert real.exists(keys.cursor("acme", "job_costs", "p2")) == 1


def test_a_company_renamed_mid_run_is_still_the_same_tenant(
    real: redis.Redis, keys: KeySpace, db: Database
) -> None:
    small_company(real, keys)
    lifecycle = Lifecycle(SettingsStore(real, keys))
    outcome = runner_with(
        real, keys, db, lambda: lifecycle.set_company("acme", "alice", name="Acme Two")
    ).execute(delivery("t1"))
    assert outcome.record is not None and outcome.record.status == "succeeded"
    assert real.exists(keys.cursor("acme", "vendors", None)) == 1


def test_a_finish_after_the_removal_writes_no_summary_and_records_the_run_failed(
    real: redis.Redis, keys: KeySpace, db: Database
) -> None:
    """The removal lands after the last page (the watermark write) and before the finish:
    the finish script's own check catches it."""
    small_company(real, keys)
    store = SettingsStore(real, keys)
    runner = runner_with(real, keys, db, lambda: None)
    d = delivery("t1")
    tenant = Tenant.of(str(real.get(keys.company("acme"))), None, None)
    Lifecycle(store).remove_company("acme", "alice")
    store.add_company("acme", "xero")
    record = RunRecord(
        kind="vendors",
        company="acme",
        project=None,
        scheduled_for="s1",
        started_at=now(),
        task_id="t1",
    ).finish("succeeded", counts={"created": 30})
    final = runner._final(record, replace(d, tenant=tenant))
    assert (final.status, final.error) == ("failed", GONE_ERROR)
    assert "t1" not in last_run_ids(real, keys)
    assert RunLog(db).recent("acme")[0].status == "failed"


def test_the_old_tenants_run_writes_no_alert_state_for_the_company_added_again(
    real: redis.Redis, keys: KeySpace
) -> None:
    small_company(real, keys)
    store = SettingsStore(real, keys)
    old = Tenant.of(str(real.get(keys.company("acme"))), None, None)
    Lifecycle(store).remove_company("acme", "alice")
    store.add_company("acme", "xero", admin="alice")  # the new tenant has a rule of its own
    AlertRules(store).add(
        "acme",
        "alice",
        url="http://127.0.0.1:9/hook",
        events=[AlertEvent.FAILED],
        failures=1,
        secret=None,
    )
    sent: list[object] = []
    outcome = RunOutcome("acme", "vendors", None, "failed", "boom", "s1", company_stamp=old.company)
    assert Evaluator(real, keys, 3600, lambda r, m: sent.append(m)).on_run(outcome) == []
    assert real.exists(keys.alert_state("acme")) == 0 and sent == []


def test_the_heartbeat_gives_a_removed_tenants_lock_and_place_back_at_once(
    real: redis.Redis, keys: KeySpace
) -> None:
    small_company(real, keys)
    tenant = Tenant.of(str(real.get(keys.company("acme"))), None, None)
    beat = lua.load(real, "run_heartbeat")
    lock, running = keys.run_lock("acme", "vendors", None), keys.running("acme")
    real.set(lock, "t1|a", px=60_000)
    where = [lock, running, keys.company("acme"), keys.projects("acme")]
    assert beat(keys=where, args=["t1|a", 60_000, "t1", *tenant.args()]) == 1
    assert real.zscore(running, "t1") is not None
    store = SettingsStore(real, keys)
    Lifecycle(store).remove_company("acme", "alice")
    store.add_company("acme", "xero")
    assert beat(keys=where, args=["t1|a", 60_000, "t1", *tenant.args()]) == -1
    assert real.exists(lock) == 0 and real.zscore(running, "t1") is None


def test_the_watermark_script_stores_only_for_the_tenant_the_run_started_for(
    real: redis.Redis, keys: KeySpace
) -> None:
    small_company(real, keys)
    save = lua.load(real, "watermark_save")
    mark = keys.cursor("acme", "job_costs", "p1")
    where = [mark, keys.company("acme"), keys.projects("acme")]
    tenant = Tenant.of(
        str(real.get(keys.company("acme"))), "p1", str(real.hget(keys.projects("acme"), "p1"))
    )
    assert save(keys=where, args=["w1", *tenant.args()]) == "ok" and real.get(mark) == "w1"
    store = SettingsStore(real, keys)
    Lifecycle(store).remove_project("acme", "p1", "alice")
    store.add_project("acme", "p1")  # the same id, a new project
    assert save(keys=where, args=["w2", *tenant.args()]) == "project"
    assert real.get(mark) is None


def test_a_live_runs_heartbeat_tells_it_to_stop_once_its_company_is_removed(
    real: redis.Redis, keys: KeySpace
) -> None:
    small_company(real, keys)
    tenant = Tenant.of(str(real.get(keys.company("acme"))), None, None)
    lock = RunLock.new("t1")
    lock_key, running = keys.run_lock("acme", "vendors", None), keys.running("acme")
    real.set(lock_key, lock.format(), px=3000)
    script = lua.load(real, "run_heartbeat")
    where = (keys.company("acme"), keys.projects("acme"), tenant)
    with Heartbeat(script, lock_key, running, lock, 300, tenant=where) as beat:
        wait_until(lambda: real.zscore(running, "t1") is not None, 5, "never renewed")
        assert not beat.lost
        Lifecycle(SettingsStore(real, keys)).remove_company("acme", "alice")
        wait_until(lambda: beat.lost, 5, "the heartbeat never noticed the removal")
    assert real.exists(lock_key) == 0 and real.zscore(running, "t1") is None
