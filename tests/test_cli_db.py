"""``db upgrade``/``current``/``import-redis``, ``history`` filters and ``reconcile --fix`` through
the CLI (CliRunner on fakeredis), on the test's own SQLite database (and once on PostgreSQL).

The database commands find their database the way operators' do, through
``ERP_SYNC_DATABASE_URL``: the ``env`` fixture points it at the test's migrated SQLite copy, and
``unmigrated`` at an empty file of the test's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from config.env import get_settings
from config.keys import KeySpace
from config.models import RunRecord, RunStatus
from erp_sync.connectors.base import Record
from erp_sync.connectors.sandbox_data import SandboxData
from erp_sync.db import Database, RecordStore, RunLog, database
from erp_sync.db.engine import head_revision
from erp_sync.db.schema import COLLECTIONS
from tests.support.cli import Invoke, invoker
from tests.support.db import deleted_ids, run_count
from tests.support.erp import small_company
from tests.support.snapshot import snapshot


@pytest.fixture
def run(fake: redis.Redis, keys: KeySpace, env: pytest.MonkeyPatch) -> Invoke:
    small_company(fake, keys, "acme", projects=("p1", "p2"))
    return invoker(fake)


@pytest.fixture
def unmigrated(env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """``ERP_SYNC_DATABASE_URL`` naming an empty SQLite file: no schema at all."""
    url = f"sqlite:///{tmp_path / 'fresh' / 'erp_sync.db'}"
    env.setenv("ERP_SYNC_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    database(url).dispose()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- db current / db upgrade ----------------------------------------------------------------


def test_db_current_before_and_after_db_upgrade(run: Invoke, unmigrated: str) -> None:
    head = head_revision()
    code, out, _ = run("db", "current")
    assert (code, out) == (
        0,
        f"{unmigrated}: at no schema, needs {head} (behind: run `erp-sync db upgrade`)\n",
    )
    assert json.loads(run("db", "current", "--json")[1]) == {
        "url": unmigrated,
        "current": None,
        "head": head,
        "up_to_date": False,
    }
    code, out, _ = run("db", "upgrade")
    assert (code, out) == (0, f"{unmigrated}: upgraded from an empty database to {head}\n")
    code, out, _ = run("db", "current")
    assert (code, out) == (0, f"{unmigrated}: at {head}, needs {head} (up to date)\n")
    assert json.loads(run("db", "current", "--json")[1]) == {
        "url": unmigrated,
        "current": head,
        "head": head,
        "up_to_date": True,
    }


def test_db_upgrade_twice_is_idempotent(run: Invoke, unmigrated: str) -> None:
    assert run("db", "upgrade")[0] == 0
    code, out, _ = run("db", "upgrade")
    assert (code, out) == (0, f"{unmigrated}: already at {head_revision()}\n")
    assert run_count(database(unmigrated)) == 0  # the tables are there, and usable


@pytest.mark.integration
def test_db_upgrade_on_postgresql_masks_the_password(
    run: Invoke, env: pytest.MonkeyPatch, pg_url: str
) -> None:
    # The private cluster trusts local connections: the password is sent and ignored.
    url = pg_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    env.setenv("ERP_SYNC_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        code, out, _ = run("db", "upgrade")
        assert code == 0 and "upgraded from an empty database" in out
        assert "s3cret-pw" not in out and "postgres:***@" in out
        assert json.loads(run("db", "current", "--json")[1])["up_to_date"] is True
        assert run("history", "acme", "--json")[1].strip() == "[]"
    finally:
        database(url).dispose()


@pytest.mark.parametrize(
    "args",
    [
        ("history", "acme"),
        ("history", "acme", "--status", "failed", "--json"),
        ("reconcile", "acme"),
        ("reconcile", "acme", "--fix"),
        ("db", "import-redis", "--delete"),
    ],
)
def test_a_command_on_an_unmigrated_database_says_so_in_one_line(
    run: Invoke, unmigrated: str, fake: redis.Redis, keys: KeySpace, args: tuple[str, ...]
) -> None:
    fake.hset(keys.procore("acme", "vendors"), "V1", json.dumps({"id": "V1"}))
    before = snapshot(fake, keys.prefix)
    code, out, err = run(*args)
    assert code == 1 and out == ""
    assert one_line(err) == (
        f"error: the database {unmigrated} is empty (no schema), this "
        f"code needs {head_revision()}: run `erp-sync db upgrade`"
    )
    if args[0] != "reconcile":  # (reconcile's ERP reads seed the sandbox and take tokens)
        assert snapshot(fake, keys.prefix) == before


# --- history --------------------------------------------------------------------------------


def record(
    task_id: str,
    started: datetime,
    kind: str = "vendors",
    project: str | None = None,
    status: RunStatus = "succeeded",
) -> RunRecord:
    return RunRecord(
        kind=kind,
        company="acme",
        project=project,
        task_id=task_id,
        scheduled_for=f"{started:%Y-%m-%dT%H:%M:%SZ}",
        started_at=started,
    ).finish(
        status,
        at=started + timedelta(seconds=3),
        counts={"created": 7, "updated": 1} if status == "succeeded" else None,
        error="ErpServerError: 503" if status == "failed" else None,
    )


@pytest.fixture
def runs(db: Database) -> list[RunRecord]:
    """Runs over the last weeks, on real time (``--since`` counts back from Redis's clock)."""
    now = datetime.now(UTC).replace(microsecond=0)
    saved = [
        record("v-old", now - timedelta(days=20)),
        record("c-p1-old", now - timedelta(days=9), "job_costs", "p1", "failed"),
        record("c-p2", now - timedelta(days=3), "job_costs", "p2"),
        record("pay-p1", now - timedelta(days=1), "payments", "p1", "failed"),
        record("v-new", now - timedelta(hours=1)),
    ]
    log = RunLog(db)
    for r in saved:
        log.save(r)
    return saved


def shown(run: Invoke, *args: str) -> list[str]:
    code, out, err = run("history", "acme", "--json", *args)
    assert code == 0, err
    return [r["task_id"] for r in json.loads(out)]


def test_history_reads_the_database_newest_first_with_filters(
    run: Invoke, runs: list[RunRecord]
) -> None:
    assert shown(run) == ["v-new", "pay-p1", "c-p2", "c-p1-old", "v-old"]
    assert shown(run, "--status", "failed") == ["pay-p1", "c-p1-old"]
    assert shown(run, "--kind", "job_costs") == ["c-p2", "c-p1-old"]
    assert shown(run, "--project", "p1") == ["pay-p1", "c-p1-old"]
    assert shown(run, "--since", "7d") == ["v-new", "pay-p1", "c-p2"]
    assert shown(run, "--since", "36h") == ["v-new", "pay-p1"]
    assert shown(run, "--since", "7d", "--status", "failed", "--project", "p1") == ["pay-p1"]
    assert shown(run, "--kind", "jobs") == []
    assert shown(run, "--limit", "2") == ["v-new", "pay-p1"]
    iso = f"{runs[2].started_at:%Y-%m-%dT%H:%M:%S}"  # an ISO time, UTC when it has no zone
    assert shown(run, "--since", iso) == ["v-new", "pay-p1", "c-p2"]
    full = json.loads(run("history", "acme", "--json", "--limit", "1")[1])[0]
    assert RunRecord.model_validate(full) == runs[-1]
    code, out, _ = run("history", "acme", "--status", "succeeded")
    assert code == 0 and out.splitlines()[0].startswith("STARTED (UTC)")
    assert len(out.splitlines()) == 4 and "created=7 updated=1" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "--since must be like 7d, 12h, 30m or an ISO date"),
        (("--since", "7y"), "--since must be like 7d"),
        (("--status", "lost"), "'lost' is not one of"),
        (("--kind", "invoices"), "'invoices' is not one of"),
    ],
)
def test_a_bad_history_filter_is_a_one_line_error(
    run: Invoke, runs: list[RunRecord], args: tuple[str, ...], message: str
) -> None:
    code, out, err = run("history", "acme", *args)
    assert code != 0 and out == ""
    assert message in one_line(err)


# --- reconcile ------------------------------------------------------------------------------


def drifted(run: Invoke, *args: str) -> dict[str, dict[str, list[str]]]:
    code, out, err = run("reconcile", "acme", "--json", *args)
    assert code == 0, err
    return {name: d for name, d in json.loads(out).items() if any(d.values())}


def test_reconcile_reports_drift_fix_repairs_it_and_a_rerun_is_clean(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    first = drifted(run)  # nothing synced yet: every collection is missing everything
    assert set(first) == {
        "vendors",
        "jobs",
        "cost_codes",
        "project_cost_codes:p1",
        "project_cost_codes:p2",
        "job_costs:p1",
        "job_costs:p2",
        "payments:p1",
        "payments:p2",
    }
    assert len(first["vendors"]["missing"]) == 30 and len(first["job_costs:p2"]["missing"]) == 25
    code, out, _ = run("reconcile", "acme", "--fix")
    assert code == 0 and "drifted collection(s) from the ERP's full listing" in out
    assert drifted(run) == {}
    data = SandboxData(fake, keys)
    added = data.add_vendor("acme", "Late Steel Co")
    data.delete("acme", "vendors", "V00003")
    changed = {**data.all("acme", "vendors")["V00004"], "city": "Elsewhere"}
    data.put("acme", "vendors", changed)
    assert drifted(run) == {
        "vendors": {"missing": [added["id"]], "extra": ["V00003"], "different": ["V00004"]}
    }
    assert drifted(run, "--fix") == {
        "vendors": {"missing": [added["id"]], "extra": ["V00003"], "different": ["V00004"]}
    }
    assert drifted(run) == {}
    store = RecordStore(db, "acme")
    assert deleted_ids(store, "vendors") == {"V00003"}  # marked, kept
    assert store.all("vendors")["V00004"] == changed
    assert store.all("vendors") == data.all("acme", "vendors")


def test_reconcile_fix_reports_every_collection_it_fixed(run: Invoke) -> None:
    found = drifted(run)
    assert drifted(run, "--fix") == found


def test_reconcile_of_one_project(run: Invoke) -> None:
    assert run("reconcile", "acme", "--project", "p2", "--fix")[0] == 0
    left = drifted(run)
    assert "job_costs:p2" not in left and "job_costs:p1" in left


# --- db import-redis ------------------------------------------------------------------------


def vendor(n: int, city: str = "Springfield") -> Record:
    return {"id": f"V{n:05d}", "name": f"Vendor {n}", "active": True, "tax_id": "", "city": city}


def cost(n: int, project: str) -> Record:
    return {
        "id": f"JC{n:06d}",
        "job": project,
        "cost_code": f"{project}-001",
        "cost_type": "M",
        "amount_cents": 100 * n,
        "description": "concrete",
    }


def put(client: redis.Redis, key: str, records: list[Record]) -> None:
    client.hset(key, mapping={str(r["id"]): json.dumps(r) for r in records})


@pytest.fixture
def legacy(fake: redis.Redis, keys: KeySpace) -> dict[str, Any]:
    """What the Redis-backed store of earlier versions left: Procore-side hashes, run records."""
    small_company(fake, keys, "stone", erp="sage_100")
    data: dict[str, Any] = {
        "acme vendors": [vendor(1), vendor(2), vendor(3)],
        "acme job_costs p1": [cost(1, "p1"), cost(2, "p1")],
        "acme job_costs p2": [cost(1, "p2")],
        "stone vendors": [vendor(1, "Stonetown")],
        "runs": [
            record("old-1", datetime(2026, 3, 1, tzinfo=UTC)),
            record("old-2", datetime(2026, 3, 2, tzinfo=UTC), "job_costs", "p1", "failed"),
        ],
    }
    put(fake, keys.procore("acme", "vendors"), data["acme vendors"])
    put(fake, keys.procore("acme", "job_costs:p1"), data["acme job_costs p1"])
    put(fake, keys.procore("acme", "job_costs:p2"), data["acme job_costs p2"])
    put(fake, keys.procore("stone", "vendors"), data["stone vendors"])
    fake.hset(keys.procore("acme", "invoices"), "INV1", "{}")  # never a Procore-side collection
    fake.hset(keys.runs("acme"), mapping={r.task_id: r.model_dump_json() for r in data["runs"]})
    fake.hset(keys.last_runs, "succeeded:vendors", json.dumps({"company": "acme"}))
    return data


def versions(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every Procore-side row's key and version: an import that rewrites a row moves one."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with db.engine.connect() as conn:
        for name, c in COLLECTIONS.items():
            key = [col for col in c.table.primary_key.columns]
            out[name] = [
                tuple(r) for r in conn.execute(select(*key, c.table.c.version).order_by(*key))
            ]
    return out


def test_db_import_redis_imports_once_and_delete_removes_the_old_hashes(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database, legacy: dict[str, Any]
) -> None:
    code, out, err = run("db", "import-redis")
    assert code == 0, err
    assert "acme vendors: 3 records (3 new)" in out
    assert "acme job_costs p1: 2 records (2 new)" in out
    assert out.splitlines()[-1] == (
        "imported: 7 Procore-side records, 2 runs (2 new); 1 unrecognised keys left alone"
    )
    acme, stone = RecordStore(db, "acme"), RecordStore(db, "stone")
    assert acme.all("vendors") == {r["id"]: r for r in legacy["acme vendors"]}
    assert acme.all("job_costs", "p1") == {r["id"]: r for r in legacy["acme job_costs p1"]}
    assert acme.all("job_costs", "p2") == {r["id"]: r for r in legacy["acme job_costs p2"]}
    assert stone.all("vendors") == {"V00001": vendor(1, "Stonetown")}
    assert RunLog(db).recent("acme") == legacy["runs"][::-1]
    after_first = versions(db)

    code, again, _ = run("db", "import-redis")  # idempotent: nothing new, no row rewritten
    assert code == 0
    assert "acme vendors: 3 records (0 new)" in again
    assert again.splitlines()[-1] == (
        "imported: 7 Procore-side records, 2 runs (0 new); 1 unrecognised keys left alone"
    )
    assert versions(db) == after_first and run_count(db) == 2

    assert run("db", "import-redis", "--delete")[0] == 0
    assert not fake.exists(
        keys.procore("acme", "vendors"),
        keys.procore("acme", "job_costs:p1"),
        keys.procore("acme", "job_costs:p2"),
        keys.procore("stone", "vendors"),
    )
    assert fake.exists(keys.procore("acme", "invoices"))  # what it does not know, it leaves
    assert fake.hlen(keys.runs("acme")) == 2  # live working records of the runs: kept
    assert versions(db) == after_first


def test_db_import_redis_leaves_records_a_sync_already_wrote_alone(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    store = RecordStore(db, "acme")
    store.write_page("vendors", None, [vendor(1, "Newtown"), vendor(2)])
    store.write_page("vendors", None, [], deleted=["V00002"])
    put(fake, keys.procore("acme", "vendors"), [vendor(1, "Oldtown"), vendor(2), vendor(3)])
    assert run("db", "import-redis")[0] == 0
    assert store.all("vendors", include_deleted=True)["V00001"]["city"] == "Newtown"
    assert deleted_ids(store, "vendors") == {"V00002"}
    assert set(store.all("vendors")) == {"V00001", "V00003"}
