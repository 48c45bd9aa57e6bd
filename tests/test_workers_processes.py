"""Real Celery workers (subprocesses) against a real redis-server: the sync paths end to end."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from config.models import Erp, SyncKind
from erp_sync.connectors.sandbox import SandboxErp
from erp_sync.db import RecordStore, database
from erp_sync.runs.records import RunRecords
from erp_sync.runs.syncs import reconcile
from erp_sync.throttle.ratelimit import set_limit
from tests.support import procs
from tests.support.erp import Sender, small_company
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs
from tests.support.workers import Start, Workers, finished

pytestmark = [pytest.mark.integration, pytest.mark.processes]


@pytest.fixture
def worker_env(real: redis.Redis, redis_server: RedisServer, prefix: str) -> dict[str, str]:
    return {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix}


@pytest.fixture
def sender(worker_env: dict[str, str]) -> Iterator[Sender]:
    s = Sender(worker_env)
    yield s
    s.close()


@pytest.fixture
def start(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Start]:
    workers = Workers(worker_env, tmp_path)
    yield workers.start
    workers.stop()


def in_sync(client: redis.Redis, keys: KeySpace, kind: SyncKind, project: str | None) -> bool:
    erp = SandboxErp(client, keys, "acme")
    return all(d.clean for d in reconcile(database(), "acme", kind, project, erp).values())


def vendors_written(company: str = "acme") -> int:
    """Vendor rows in the test's database (committed pages only: each page is a transaction)."""
    return len(RecordStore(database(), company).all("vendors"))


def test_erp_changes_reach_the_procore_side_and_a_quiet_rerun_writes_nothing(
    real: redis.Redis, keys: KeySpace, start: Start, sender: Sender
) -> None:
    data = small_company(real, keys)
    start()
    first = finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "s1"))
    assert first.counts == {"created": 30, "updated": 0, "unchanged": 0, "deleted": 0}
    vendor = data.add_vendor("acme", "Late Steel Co")
    second = finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "s2"))
    assert second.counts == {"created": 1, "updated": 0, "unchanged": 0, "deleted": 0}
    store = RecordStore(database(), "acme")
    assert store.all("vendors")[vendor["id"]] == vendor
    before = store.all("vendors", include_deleted=True)
    third = finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "s3"))
    assert (third.status, third.counts) == (
        "succeeded",
        {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0},
    )
    assert store.all("vendors", include_deleted=True) == before


def test_transient_faults_are_retried_and_a_permanent_fault_fails_with_its_reason(
    real: redis.Redis, keys: KeySpace, start: Start, sender: Sender
) -> None:
    data = small_company(real, keys, fail_kind="server_error")  # a rate limit defers instead
    data.fail_next("acme", 2)
    small_company(real, keys, "broken", permanent="bad_credentials")
    start()
    sender.send(SyncKind.JOBS, "broken", "b1")
    record = finished(real, keys, "acme", sender.send(SyncKind.JOBS, "acme", "j1"))
    assert (record.status, record.attempt) == ("succeeded", 3)
    assert in_sync(real, keys, SyncKind.JOBS, None)
    broken = finished(real, keys, "broken", "b1")
    assert (broken.status, broken.attempt) == ("failed", 1)
    assert broken.error == "BadCredentials: the ERP of 'broken' rejected the credentials"


def test_a_rate_limited_erp_is_never_called_faster_than_its_limit(
    real: redis.Redis, keys: KeySpace, start: Start, sender: Sender
) -> None:
    projects = ("p1", "p2", "p3")
    small_company(real, keys, projects=projects)
    rate, burst = 8.0, 2.0
    set_limit(real, keys, Erp.XERO.value, rate, burst)
    start("w1", concurrency=4)
    start("w2", concurrency=4)
    ids = [sender.send(SyncKind.VENDORS, "acme", "v")]
    ids += [sender.send(SyncKind.JOB_COSTS, "acme", f"c-{p}", p) for p in projects]
    for task_id in ids:
        assert finished(real, keys, "acme", task_id).status == "succeeded"
    calls = sorted(float(t) for t in real.lrange(keys.erp_calls("acme"), 0, -1))
    assert len(calls) >= 4 + 3 * 6
    # Any run of calls i..j fits the bucket: at most burst + rate * elapsed (+1 for the jitter
    # between taking a token and the ERP logging the call).
    for i, j in itertools.combinations(range(len(calls)), 2):
        assert j - i + 1 <= burst + rate * (calls[j] - calls[i]) + 1, (i, j, calls)


def test_an_overlapping_slot_is_skipped_and_a_duplicate_delivery_runs_once(
    real: redis.Redis, keys: KeySpace, start: Start, sender: Sender
) -> None:
    small_company(real, keys, latency_ms=700, page_size=100)
    start(concurrency=4)
    history = RunRecords(real, keys)
    first = sender.send(SyncKind.VENDORS, "acme", "slot-1")
    procs.wait_until(lambda: history.get("acme", first) is not None, 15)
    skipped = finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "slot-2"))
    assert skipped.status == "skipped" and "slot-1" in (skipped.error or "")
    assert finished(real, keys, "acme", first).status == "succeeded"
    calls = real.llen(keys.erp_calls("acme"))
    sender.send(SyncKind.VENDORS, "acme", first)  # the same slot delivered again
    marker = sender.send(SyncKind.JOBS, "acme", "after")  # queued behind it on one queue
    finished(real, keys, "acme", marker)
    assert real.llen(keys.erp_calls("acme")) == calls + 1  # only the jobs sync called the ERP
    record = history.get("acme", first)
    assert record is not None and record.attempt == 1
    assert [r.task_id for r in recent_runs(history, "acme")].count(first) == 1


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_killed_prefork_child_is_requeued_and_its_sync_reruns_without_duplicates(
    real: redis.Redis, keys: KeySpace, start: Start, sender: Sender
) -> None:
    small_company(real, keys, latency_ms=150, page_size=3)
    # The killed child's run lock outlives it by one TTL (its heartbeat stops): the requeued
    # delivery waits that long before it reruns, so a short one (renewed every second).
    worker = start(pool="prefork", concurrency=1, env={"ERP_SYNC_RUN_LOCK_SECONDS": "3"})
    task_id = sender.send(SyncKind.VENDORS, "acme", "k1")
    procs.wait_until(lambda: vendors_written() >= 6, 20, "the sync never started writing")
    assert vendors_written() < 30
    for child in child_pids(worker.pid):
        os.kill(child, signal.SIGKILL)
    record = finished(real, keys, "acme", task_id)
    assert (record.status, record.attempt) == ("succeeded", 2)
    assert record.counts["unchanged"] >= 6 and record.counts["created"] < 30
    assert sum(record.counts.values()) == 30
    assert vendors_written() == 30 and in_sync(real, keys, SyncKind.VENDORS, None)


def test_a_killed_worker_is_redelivered_after_the_visibility_timeout(
    real: redis.Redis, keys: KeySpace, start: Start, sender: Sender
) -> None:
    # A sync of 11 pages at 100 ms (about 1.1 s, mostly the sandbox's sleeps) well inside the
    # soft limit; the redelivery comes after the visibility timeout, the bulk of this test.
    small_company(real, keys, latency_ms=100, page_size=3)
    limits = {
        "ERP_SYNC_TASK_SOFT_TIME_LIMIT": "3",
        "ERP_SYNC_TASK_TIME_LIMIT": "3.5",
        "ERP_SYNC_VISIBILITY_TIMEOUT": "4",
    }
    doomed = start("doomed", env=limits, concurrency=2)
    task_id = sender.send(SyncKind.VENDORS, "acme", "k2")
    procs.wait_until(lambda: vendors_written() >= 6, 20, "the sync never started writing")
    doomed.kill_group()
    assert vendors_written() < 30
    start("rescuer", env=limits, concurrency=2)
    record = finished(real, keys, "acme", task_id, timeout=40)
    assert (record.status, record.attempt) == ("succeeded", 2)
    assert vendors_written() == 30 and in_sync(real, keys, SyncKind.VENDORS, None)


def test_sync_now_and_history_end_to_end(
    real: redis.Redis, keys: KeySpace, start: Start, worker_env: dict[str, str]
) -> None:
    small_company(real, keys, projects=("p1", "p2"))
    real.hset(keys.users("acme"), "sam", "standard")
    start()

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=procs.ROOT,
            env=procs.process_env(worker_env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    queued = manage("sync-now", "acme", "payments", "--as", "sam")
    assert queued.returncode == 0, queued.stderr
    task_ids = [line.rsplit(": ", 1)[1] for line in queued.stdout.splitlines()]
    assert len(task_ids) == 2
    for task_id in task_ids:
        assert finished(real, keys, "acme", task_id).status == "succeeded"
    shown = json.loads(manage("history", "acme", "--json").stdout)
    assert {(r["project"], r["trigger"], r["status"]) for r in shown} == {
        ("p1", "manual", "succeeded"),
        ("p2", "manual", "succeeded"),
    }
    refused = manage("sync-now", "acme", "payments", "--as", "nobody")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
