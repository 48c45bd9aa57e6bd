"""The database store on both dialects (SQLite and a real PostgreSQL, via ``any_db``).

``RecordStore.write_page`` is one transaction per page, a batched upsert that touches only rows
whose content changed, deletions marked rather than dropped; ``RunLog`` is the run history table;
``Database`` checks the schema and turns an unreachable server into ``DatabaseUnavailable``.
Each test opens a fresh ``RecordStore`` for every write, so the counts it checks can only come
from the database, never from state the store kept in memory.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import event, exc, func, select, text
from sqlalchemy.engine import make_url

from config.models import RunRecord, RunStatus
from erp_sync.connectors.base import Record
from erp_sync.db import Counts, Database, RecordStore, RunLog, mask
from erp_sync.db.engine import alembic_config, head_revision
from erp_sync.db.schema import COLLECTIONS
from erp_sync.errors import DatabaseUnavailable, SchemaBehind
from tests.support.db import deleted_ids, run_count, run_record, written
from tests.support.pgproc import PostgresServer

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
T2 = T0 + timedelta(hours=2)

RowState = tuple[int, datetime, bool]  # version, last_changed, deleted_in_erp


def vendor(n: int, **changes: Any) -> Record:
    return {
        "id": f"V{n:05d}",
        "name": f"Vendor {n}",
        "active": True,
        "tax_id": f"{n:09d}",
        "city": "Springfield",
        **changes,
    }


def cost(n: int, project: str, amount_cents: Any = 1_000, **changes: Any) -> Record:
    return {
        "id": f"JC{n:06d}",
        "job": project,
        "cost_code": f"{project}-001",
        "cost_type": "M",
        "amount_cents": amount_cents,
        "description": "concrete",
        **changes,
    }


def store(db: Database, company: str = "acme") -> RecordStore:
    """A new store object per write: whatever it counts, it read from the database."""
    return RecordStore(db, company)


def rows(db: Database, name: str) -> dict[tuple[str, str | None, str], RowState]:
    """Every row of a collection, all companies and projects, with what a write would move."""
    c = COLLECTIONS[name]
    t = c.table
    project = t.c.project if c.project_level else None
    query = select(
        t.c.company,
        *([project] if project is not None else []),
        t.c.erp_id,
        t.c.version,
        t.c.last_changed,
        t.c.deleted_in_erp,
    )
    out: dict[tuple[str, str | None, str], RowState] = {}
    with db.engine.connect() as conn:
        for row in conn.execute(query):
            values = tuple(row)
            if project is None:
                values = (values[0], None, *values[1:])
            company, proj, erp_id, version, changed, deleted = values
            out[(company, proj, erp_id)] = (int(version), changed, bool(deleted))
    return out


def version_sum(db: Database, name: str) -> int:
    t = COLLECTIONS[name].table
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(t.c.version), 0))).scalar_one())


# --- records --------------------------------------------------------------------------------


def test_write_page_counts_come_from_the_database(any_db: Database) -> None:
    assert store(any_db).write_page(
        "vendors", None, [vendor(1), vendor(2), vendor(3)], now=T0
    ) == Counts(created=3)
    second = store(any_db).write_page(
        "vendors", None, [vendor(1), vendor(2, city="Shelbyville"), vendor(3), vendor(4)], now=T1
    )
    assert second == Counts(created=1, updated=1, unchanged=2)
    third = store(any_db).write_page(
        "vendors", None, [vendor(1)], deleted=["V00003", "V09999"], now=T2
    )
    assert third == Counts(unchanged=1, deleted=1)  # an id never seen is not a deletion
    assert store(any_db).write_page("vendors", None, [], deleted=["V00003"]) == Counts()
    assert store(any_db).all("vendors")["V00002"]["city"] == "Shelbyville"
    assert {k[2]: v[0] for k, v in rows(any_db, "vendors").items()} == {
        "V00001": 1,
        "V00002": 2,
        "V00003": 2,
        "V00004": 1,
    }


def test_a_page_without_a_change_writes_zero_rows(any_db: Database) -> None:
    page = [vendor(n) for n in range(1, 21)]
    store(any_db).write_page("vendors", None, page, now=T0)
    store(any_db).write_page("vendors", None, [], deleted=["V00020"], now=T0)
    before, versions = rows(any_db, "vendors"), version_sum(any_db, "vendors")
    # The same records, the same (already applied) deletion, a later clock: nothing moves,
    # not even last_changed, which an upsert without its WHERE would have set to T1.
    again = store(any_db).write_page("vendors", None, page[:-1], deleted=["V00020"], now=T1)
    assert again == Counts(unchanged=19)
    assert written(again) == 0
    assert rows(any_db, "vendors") == before
    assert version_sum(any_db, "vendors") == versions


def test_an_erp_deletion_marks_the_row_and_a_recreated_record_undeletes_it(
    any_db: Database,
) -> None:
    store(any_db).write_page("vendors", None, [vendor(1), vendor(2)], now=T0)
    assert store(any_db).write_page("vendors", None, [], deleted=["V00001"], now=T1) == Counts(
        deleted=1
    )
    s = store(any_db)
    assert set(s.all("vendors")) == {"V00002"}
    assert set(s.all("vendors", include_deleted=True)) == {"V00001", "V00002"}
    assert deleted_ids(s, "vendors") == {"V00001"}
    kept = rows(any_db, "vendors")[("acme", None, "V00001")]
    assert kept[0] == 2 and kept[2] is True  # kept, marked, and counted as a change
    # The ERP brings it back, unchanged: the mark goes and it counts as an update.
    assert store(any_db).write_page("vendors", None, [vendor(1)], now=T2) == Counts(updated=1)
    assert deleted_ids(store(any_db), "vendors") == set()
    assert store(any_db).all("vendors")["V00001"] == vendor(1)
    assert rows(any_db, "vendors")[("acme", None, "V00001")][0] == 3


def test_project_level_collections_and_companies_are_kept_apart(any_db: Database) -> None:
    # The same ERP id in two projects and in another company: three different rows.
    store(any_db).write_page("job_costs", "p1", [cost(1, "p1", 100), cost(2, "p1")], now=T0)
    store(any_db).write_page("job_costs", "p2", [cost(1, "p2", 200)], now=T0)
    store(any_db, "other").write_page("job_costs", "p1", [cost(1, "p1", 300)], now=T0)
    assert store(any_db).write_page("job_costs", "p2", [cost(1, "p2", 200)]) == Counts(unchanged=1)
    assert store(any_db).write_page("job_costs", "p1", [], deleted=["JC000001"]) == Counts(
        deleted=1
    )
    assert set(store(any_db).all("job_costs", "p1")) == {"JC000002"}
    assert store(any_db).all("job_costs", "p2")["JC000001"]["amount_cents"] == 200
    assert store(any_db, "other").all("job_costs", "p1")["JC000001"]["amount_cents"] == 300
    assert deleted_ids(store(any_db, "other"), "job_costs", "p1") == set()
    with pytest.raises(ValueError, match="needs a project"):
        store(any_db).all("job_costs")


def test_a_project_level_page_without_a_project_is_refused_and_writes_nothing(
    any_db: Database,
) -> None:
    with pytest.raises(ValueError, match="needs a project"):
        store(any_db).write_page("job_costs", None, [cost(1, "p1")])
    assert rows(any_db, "job_costs") == {}


def test_a_page_is_all_or_nothing_when_a_typed_column_fails(any_db: Database) -> None:
    store(any_db).write_page("job_costs", "p1", [cost(1, "p1"), cost(2, "p1")], now=T0)
    before = rows(any_db, "job_costs")
    page = [cost(1, "p1", 5_000), cost(3, "p1"), cost(4, "p1", "abc")]
    with pytest.raises(ValueError):
        store(any_db).write_page("job_costs", "p1", page, deleted=["JC000002"], now=T1)
    assert rows(any_db, "job_costs") == before
    assert store(any_db).all("job_costs", "p1")["JC000001"]["amount_cents"] == 1_000


def test_a_page_the_database_rejects_half_way_leaves_nothing_of_it(any_db: Database) -> None:
    """On SQLite the batched upsert runs as several statements for a big page (insertmanyvalues
    batches): the first ones succeed inside the transaction, the last fails on a value the
    column cannot hold (out of BIGINT's range), and the rollback takes the earlier ones with it.
    On PostgreSQL the page is one statement (arrays per column): it fails whole."""
    store(any_db).write_page("job_costs", "p1", [cost(1, "p1")], now=T0)
    before = rows(any_db, "job_costs")
    page = [cost(n, "p1", 2_000) for n in range(1, 1_500)]
    page.append(cost(1_500, "p1", 2**70))
    inserts: list[str] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    engine = any_db.raw_engine
    event.listen(engine, "after_cursor_execute", executed)
    try:
        # PostgreSQL rejects the value (DataError); sqlite3 cannot even bind it (OverflowError).
        with pytest.raises((exc.DataError, OverflowError)):
            store(any_db).write_page("job_costs", "p1", page, now=T1)
    finally:
        event.remove(engine, "after_cursor_execute", executed)
    if any_db.engine.dialect.name == "sqlite":
        assert inserts, "no statement of the page ran before the failing one: nothing proved"
    assert rows(any_db, "job_costs") == before


# --- run history ----------------------------------------------------------------------------


def run(
    task_id: str,
    started: datetime,
    *,
    company: str = "acme",
    kind: str = "vendors",
    project: str | None = None,
    status: RunStatus = "succeeded",
) -> RunRecord:
    record = RunRecord(
        kind=kind,
        company=company,
        project=project,
        task_id=task_id,
        scheduled_for=started.isoformat(),
        started_at=started,
    )
    if status == "running":
        return record
    ok = status == "succeeded"
    return record.finish(
        status,
        at=started + timedelta(seconds=2),
        counts={"created": 3, "unchanged": 1} if ok else None,
        error=None if ok else "ErpServerError: 503",
    )


def test_runlog_save_get_and_replace(any_db: Database) -> None:
    log = RunLog(any_db)
    started = run("t1", T0, project="p1", kind="job_costs", status="running")
    log.save(started)
    assert run_record(any_db, "t1") == started
    done = started.finish("succeeded", counts={"created": 5}, at=T0 + timedelta(milliseconds=1500))
    log.save(done)
    got = run_record(any_db, "t1")
    assert got == done and got is not None and got.started_at.tzinfo is not None
    assert got.duration_ms == 1500.0
    assert run_record(any_db, "nope") is None
    assert (run_count(any_db), run_count(any_db, "acme"), run_count(any_db, "other")) == (1, 1, 0)


def test_runlog_recent_is_newest_first_and_filters(any_db: Database) -> None:
    log = RunLog(any_db)
    runs = [
        run("a", T0, kind="vendors"),
        run("b", T0 + timedelta(days=1), kind="job_costs", project="p1", status="failed"),
        run("c", T0 + timedelta(days=2), kind="job_costs", project="p2"),
        run("d", T0 + timedelta(days=3), kind="payments", project="p1", status="skipped"),
        run("e", T0 + timedelta(days=4), kind="vendors", status="failed"),
        run("x", T0 + timedelta(days=5), company="other"),
    ]
    for r in runs:
        log.save(r)

    def ids(**filters: Any) -> list[str]:
        return [r.task_id for r in log.recent("acme", **filters)]

    assert ids() == ["e", "d", "c", "b", "a"]
    assert ids(limit=2) == ["e", "d"]
    assert ids(status="failed") == ["e", "b"]
    assert ids(kind="job_costs") == ["c", "b"]
    assert ids(project="p1") == ["d", "b"]
    assert ids(kind="job_costs", project="p1", status="failed") == ["b"]
    assert ids(since=T0 + timedelta(days=2)) == ["e", "d", "c"]  # inclusive
    assert ids(status="running") == []
    assert log.recent("acme")[0] == runs[4]  # the whole record comes back


def test_runlog_since_in_another_time_zone_means_the_same_instant(any_db: Database) -> None:
    # (SQLite's DateTime drops tzinfo when binding: the log must convert to UTC itself.)
    log = RunLog(any_db)
    log.save(run("early", T0))
    log.save(run("late", T0 + timedelta(hours=3)))
    # 11:00 at +02:00 is 09:00 UTC, T0 itself: both runs started at or after it.
    since = datetime(2026, 1, 5, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    assert [r.task_id for r in log.recent("acme", since=since)] == ["late", "early"]


def test_runlog_prune_deletes_by_age_only(any_db: Database) -> None:
    log = RunLog(any_db)
    for n in range(5):
        log.save(run(f"r{n}", T0 + timedelta(days=n)))
    log.save(run("o", T0, company="other"))
    assert log.prune(T0 + timedelta(days=2)) == 3  # r0, r1, and the other company's
    assert [r.task_id for r in log.recent("acme")] == ["r4", "r3", "r2"]
    assert run_count(any_db, "other") == 0
    assert log.prune(T0 + timedelta(days=2)) == 0


def test_runlog_import_many_leaves_existing_rows_alone(any_db: Database) -> None:
    log = RunLog(any_db)
    newer = run("t1", T0)
    log.save(newer)
    stale = run("t1", T0, status="running")  # what an old Redis hash may still hold
    log.import_many([stale, run("t2", T1), run("t3", T2)])
    assert run_record(any_db, "t1") == newer
    assert run_record(any_db, "t2") == run("t2", T1)
    log.import_many([stale, run("t2", T1, status="failed")])
    assert run_record(any_db, "t2") == run("t2", T1)
    assert run_count(any_db, "acme") == 3


def test_runlog_import_many_returns_how_many_it_added(any_db: Database) -> None:
    # (psycopg reports an executemany's rowcount as -1: the count must come from RETURNING.)
    log = RunLog(any_db)
    log.save(run("t1", T0))
    assert log.import_many([run("t1", T0, status="running"), run("t2", T1), run("t3", T2)]) == 2
    assert log.import_many([run("t2", T1)]) == 0
    assert log.import_many([]) == 0


# --- the schema check and an unreachable database -------------------------------------------


def test_mask_hides_only_the_password() -> None:
    url = "postgresql+psycopg://sync:s3cret@db.example:5432/erp"
    assert mask(url) == "postgresql+psycopg://sync:***@db.example:5432/erp"
    assert mask("sqlite:////var/lib/erp-sync/x.db") == "sqlite:////var/lib/erp-sync/x.db"


def test_an_empty_sqlite_database_is_behind_in_one_line(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(SchemaBehind) as behind:
            db.check()
        message = str(behind.value)
        assert message == (
            f"the database sqlite:///{tmp_path / 'empty.db'} is empty (no "
            f"schema), this code needs {head_revision()}: run "
            "`erp-sync db upgrade`"
        )
        with pytest.raises(SchemaBehind):
            _ = db.engine  # the checked engine refuses too, not just check()
        before, after = db.upgrade()
        assert (before, after) == (None, head_revision())
        db.check()
        assert db.upgrade() == (head_revision(), head_revision())
    finally:
        db.dispose()


def test_a_database_a_migration_behind_names_its_revision_and_upgrades(tmp_path: Path) -> None:
    base = ScriptDirectory.from_config(alembic_config()).get_base()
    assert base is not None and base != head_revision()
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        with db.raw_engine.begin() as conn:  # what an earlier version's `db upgrade` left
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, base)
        with pytest.raises(SchemaBehind) as behind:
            db.check()
        assert str(behind.value) == (
            f"the database {db.masked_url} is at revision {base}, this code needs "
            f"{head_revision()}: run `erp-sync db upgrade`"
        )
        assert db.upgrade() == (base, head_revision())
        db.check()
    finally:
        db.dispose()


def test_a_database_at_a_revision_this_code_does_not_know_asks_for_newer_code(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'abc123'"))
    with pytest.raises(SchemaBehind, match=r"at revision abc123, newer than this code knows"):
        db.check()


def test_an_empty_postgresql_database_is_behind_with_the_password_masked(pg_url: str) -> None:
    # The private cluster trusts local connections, so the password is sent and ignored.
    url = make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    db = Database(url)
    try:
        with pytest.raises(SchemaBehind) as behind:
            db.check()
        message = str(behind.value)
        assert "s3cret-pw" not in message
        assert f"the database {mask(url)} is empty" in message and ":***@" in message
        assert message.endswith("run `erp-sync db upgrade`") and "\n" not in message
    finally:
        db.dispose()


def test_a_stopped_postgresql_is_database_unavailable_and_a_restart_recovers(
    pg_db: Database, postgres_server: PostgresServer
) -> None:
    s, log = store(pg_db), RunLog(pg_db)
    s.write_page("vendors", None, [vendor(1)], now=T0)
    postgres_server.stop_server()
    try:
        with pytest.raises(DatabaseUnavailable) as down:
            s.write_page("vendors", None, [vendor(2)], now=T1)
        assert str(down.value).startswith(f"the database {pg_db.masked_url} is unavailable: ")
        assert "\n" not in str(down.value)
        with pytest.raises(DatabaseUnavailable):
            log.save(run("t1", T0))
        with pytest.raises(DatabaseUnavailable):
            s.all("vendors")
    finally:
        postgres_server.start_server()
    # The same engine carries on (stale pooled connections are pinged and replaced).
    assert s.write_page("vendors", None, [vendor(1), vendor(2)], now=T1) == Counts(
        created=1, unchanged=1
    )
    assert set(s.all("vendors")) == {"V00001", "V00002"}
