"""Real Celery workers (subprocesses) writing into a real PostgreSQL, on a real redis-server.

Every worker gets ``ERP_SYNC_DATABASE_URL`` naming this test's own PostgreSQL database, and the
test process points its settings at the same URL (``pg``), so ``database()`` here and in the
workers is one database. The tests wait on what they can observe (rows, the Redis working
record, log lines), never on a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from config.env import get_settings
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.connectors.sandbox import SandboxErp
from erp_sync.connectors.sandbox_data import collection
from erp_sync.db import Database, RecordStore, RunLog, database
from erp_sync.db.schema import COLLECTIONS
from erp_sync.runs.records import RunRecords
from erp_sync.runs.syncs import reconcile
from tests.support import procs
from tests.support.db import deleted_ids, run_record
from tests.support.erp import Sender, small_company
from tests.support.pgproc import PostgresServer
from tests.support.redisproc import RedisServer
from tests.support.workers import Workers, finished

pytestmark = [pytest.mark.integration, pytest.mark.processes]

NOTHING = {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0}


class Launch(Protocol):
    """Starts a worker with ``env`` (waiting until it consumes, unless ``ready`` is False)."""

    def __call__(
        self,
        env: dict[str, str],
        name: str = "w1",
        *,
        pool: str = "threads",
        concurrency: int = 4,
        ready: bool = True,
    ) -> procs.Proc: ...


@pytest.fixture
def pg(pg_db: Database, env: pytest.MonkeyPatch) -> Iterator[Database]:
    """This test's migrated PostgreSQL database, as ``database()`` hands it to the code."""
    env.setenv("ERP_SYNC_DATABASE_URL", pg_db.url)
    get_settings.cache_clear()
    yield database()
    database(pg_db.url).dispose()


@pytest.fixture
def worker_env(
    real: redis.Redis, redis_server: RedisServer, prefix: str, pg: Database
) -> dict[str, str]:
    return {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_DATABASE_URL": pg.url,
    }


@pytest.fixture
def sender(worker_env: dict[str, str]) -> Iterator[Sender]:
    s = Sender(worker_env)
    yield s
    s.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    workers = Workers({}, tmp_path)

    def _launch(
        env: dict[str, str],
        name: str = "w1",
        *,
        pool: str = "threads",
        concurrency: int = 4,
        ready: bool = True,
    ) -> procs.Proc:
        return workers.start(name, env, pool=pool, concurrency=concurrency, ready=ready)

    yield _launch
    workers.stop()


def versions(db: Database) -> dict[str, dict[tuple[Any, ...], int]]:
    """Every Procore-side row's version by key: a write of any kind moves one."""
    out: dict[str, dict[tuple[Any, ...], int]] = {}
    with db.engine.connect() as conn:
        for name, c in COLLECTIONS.items():
            key = list(c.table.primary_key.columns)
            out[name] = {
                tuple(r[:-1]): int(r[-1]) for r in conn.execute(select(*key, c.table.c.version))
            }
    return out


def vendor_rows(db: Database) -> int:
    t = COLLECTIONS["vendors"].table
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t)).scalar_one())


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


class Sampler:
    """Counts the vendor rows over and over in a thread, as a reader of the database would."""

    def __init__(self, db: Database) -> None:
        self.db, self.seen = db, [vendor_rows(db)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.seen.append(vendor_rows(self.db))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_real_workers_sync_the_sandbox_into_postgresql_and_a_rerun_writes_nothing(
    real: redis.Redis,
    keys: KeySpace,
    launch: Launch,
    worker_env: dict[str, str],
    sender: Sender,
    pg: Database,
) -> None:
    data = small_company(real, keys)
    launch(worker_env)
    vendors = finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "v1"))
    costs = finished(real, keys, "acme", sender.send(SyncKind.JOB_COSTS, "acme", "c1", "p1"))
    assert (vendors.status, vendors.counts) == ("succeeded", {**NOTHING, "created": 30})
    assert (costs.status, costs.counts) == ("succeeded", {**NOTHING, "created": 12 + 4 + 25})
    store = RecordStore(pg, "acme")
    assert store.all("vendors") == data.all("acme", "vendors")
    assert store.all("job_costs", "p1") == data.all("acme", collection("job_costs", "p1"))
    assert store.all("project_cost_codes", "p1") == data.all(
        "acme", collection("project_cost_codes", "p1")
    )
    assert run_record(pg, "v1") == vendors  # the history row is the run's final record
    before = versions(pg)

    # Incremental: the ERP has nothing new, so nothing is read and nothing written.
    for task_id, kind, project in (
        ("v2", SyncKind.VENDORS, None),
        ("c2", SyncKind.JOB_COSTS, "p1"),
    ):
        again = finished(real, keys, "acme", sender.send(kind, "acme", task_id, project))
        assert (again.status, again.counts) == ("succeeded", NOTHING)
    # From no watermark: everything is read again, and every row compares unchanged.
    real.delete(keys.cursor("acme", "vendors", None), keys.cursor("acme", "job_costs", "p1"))
    vendors = finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "v3"))
    costs = finished(real, keys, "acme", sender.send(SyncKind.JOB_COSTS, "acme", "c3", "p1"))
    assert vendors.counts == {**NOTHING, "unchanged": 30}
    assert costs.counts == {**NOTHING, "unchanged": 41}
    assert versions(pg) == before


def test_a_killed_prefork_child_leaves_no_partial_page_and_its_rerun_writes_each_row_once(
    real: redis.Redis,
    keys: KeySpace,
    launch: Launch,
    worker_env: dict[str, str],
    sender: Sender,
    pg: Database,
) -> None:
    page_size = 3
    data = small_company(real, keys, latency_ms=150, page_size=page_size)
    # The killed child's run lock outlives it by one TTL: a short one, so the rerun comes soon.
    worker = launch({**worker_env, "ERP_SYNC_RUN_LOCK_SECONDS": "3"}, pool="prefork", concurrency=1)
    with Sampler(pg) as sampler:
        task_id = sender.send(SyncKind.VENDORS, "acme", "k1")
        procs.wait_until(
            lambda: vendor_rows(pg) >= 2 * page_size, 20, "the sync never started writing"
        )
        assert vendor_rows(pg) < 30
        children = child_pids(worker.pid)
        assert children, "no prefork child to kill"
        for child in children:
            os.kill(child, signal.SIGKILL)
        record = finished(real, keys, "acme", task_id)
    assert (record.status, record.attempt) == ("succeeded", 2)
    # Whatever a reader saw, it was whole pages: a page is one transaction.
    assert sampler.seen[-1] == 30 and len(set(sampler.seen)) > 3
    assert all(n % page_size == 0 for n in sampler.seen), sorted(set(sampler.seen))
    # The rerun re-read from the old watermark; what was committed compared unchanged.
    assert record.counts["unchanged"] >= 2 * page_size
    assert record.counts["created"] + record.counts["unchanged"] == 30
    assert set(versions(pg)["vendors"].values()) == {1}  # every row written exactly once
    assert RecordStore(pg, "acme").all("vendors") == data.all("acme", "vendors")
    drift = reconcile(pg, "acme", SyncKind.VENDORS, None, SandboxErp(real, keys, "acme"))
    assert all(d.clean for d in drift.values())


def test_an_erp_deletion_reaches_the_database_as_a_marked_row(
    real: redis.Redis,
    keys: KeySpace,
    launch: Launch,
    worker_env: dict[str, str],
    sender: Sender,
    pg: Database,
) -> None:
    data = small_company(real, keys)
    launch(worker_env)
    assert (
        finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "v1")).status
        == "succeeded"
    )
    data.delete("acme", "vendors", "V00007")
    record = finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "v2"))
    assert (record.status, record.counts) == ("succeeded", {**NOTHING, "deleted": 1})
    store = RecordStore(pg, "acme")
    assert deleted_ids(store, "vendors") == {"V00007"}
    assert "V00007" not in store.all("vendors") and len(store.all("vendors")) == 29
    assert len(store.all("vendors", include_deleted=True)) == 30  # kept, only marked
    assert versions(pg)["vendors"][("acme", "V00007")] == 2


def test_the_history_survives_a_redis_flushall(
    own_redis: RedisServer,
    env: pytest.MonkeyPatch,
    prefix: str,
    keys: KeySpace,
    launch: Launch,
    pg: Database,
) -> None:
    # A redis-server of this test's own: FLUSHALL on the session's would wipe other tests.
    env.setenv("ERP_SYNC_REDIS_URL", own_redis.url)
    get_settings.cache_clear()
    client = own_redis.client()
    worker_env = {
        "ERP_SYNC_REDIS_URL": own_redis.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_DATABASE_URL": pg.url,
    }
    small_company(client, keys)
    launch(worker_env)
    sender = Sender(worker_env)
    try:
        ids = [
            sender.send(SyncKind.VENDORS, "acme", "v1"),
            sender.send(SyncKind.JOB_COSTS, "acme", "c1", "p1"),
            sender.send(SyncKind.PAYMENTS, "acme", "pay1", "p1"),
        ]
    finally:
        sender.close()
    records = {i: finished(client, keys, "acme", i) for i in ids}
    assert {r.status for r in records.values()} == {"succeeded"}
    client.flushall()
    assert RunRecords(client, keys).get("acme", "v1") is None  # Redis forgot every run
    kept = RunLog(pg).recent("acme")
    assert {r.task_id: r for r in kept} == records
    assert len(RecordStore(pg, "acme").all("vendors")) == 30  # and the data stayed too


def test_a_database_outage_retries_the_sync_which_then_writes_every_record_once(
    real: redis.Redis,
    keys: KeySpace,
    launch: Launch,
    worker_env: dict[str, str],
    sender: Sender,
    pg: Database,
    postgres_server: PostgresServer,
) -> None:
    small_company(real, keys)
    worker = launch(worker_env)  # (a worker checks the schema as it starts: the server is up)
    history = RunRecords(real, keys)
    postgres_server.stop_server()
    try:
        task_id = sender.send(SyncKind.VENDORS, "acme", "d1")
        procs.wait_until(
            lambda: (
                (r := history.get("acme", task_id)) is not None and "unavailable" in (r.error or "")
            ),
            20,
            f"no retry note on the run:\n{worker.output()[-3000:]}",
        )
        note = history.get("acme", task_id)
        assert note is not None and note.status == "running"
        assert f"the database {pg.masked_url} is unavailable" in (note.error or "")
        assert "; retry 1 in " in (note.error or "")
        worker.wait_for(f"[{task_id}] retry: Retry in", 10)
    finally:
        postgres_server.start_server()
    record = finished(real, keys, "acme", task_id, timeout=40)
    assert (record.status, record.counts) == ("succeeded", {**NOTHING, "created": 30})
    assert set(versions(pg)["vendors"].values()) == {1} and vendor_rows(pg) == 30
    assert run_record(pg, task_id) == record


def test_a_worker_on_an_unmigrated_database_exits_naming_db_upgrade(
    real: redis.Redis, redis_server: RedisServer, prefix: str, pg_url: str, launch: Launch
) -> None:
    # The private cluster trusts local connections: the password is sent and ignored.
    url = make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    worker = launch(
        {
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_DATABASE_URL": url,
        },
        ready=False,
    )
    procs.wait_until(
        lambda: not worker.alive(), 30, f"the worker kept running:\n{worker.output()[-3000:]}"
    )
    assert worker.popen.returncode != 0
    output = worker.output()
    named = [line for line in output.splitlines() if "erp-sync db upgrade" in line]
    assert len(named) == 1, output
    assert "worker not started: the database postgresql+psycopg://postgres:***@" in named[0]
    assert "is empty (no schema)" in named[0]
    assert "s3cret-pw" not in output and "Traceback" not in output and " ready." not in output
