"""Run history in the database (``sync_runs``): every run, kept by age rather than by count.

Redis still holds each run's working record next to its lock and executed marker (they change
together, atomically, in the run scripts); this table is the history people read: ``history``,
alerts, audits months later. Every state a run passes through (running, deferred, a retry's note,
the final outcome) is written here under its task id, so the table always shows the newest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from config.models import RunRecord
from erp_sync.db.engine import Database
from erp_sync.db.schema import sync_runs

COLUMNS = [c.name for c in sync_runs.columns]


def _utc(value: datetime | None) -> datetime | None:
    """Datetimes come back naive from SQLite and in the session's zone from PostgreSQL."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(record: RunRecord) -> dict[str, Any]:
    data = record.model_dump()
    data["counts"] = json.dumps(record.counts, sort_keys=True)
    return {c: data[c] for c in COLUMNS}


def _record(row: Row[Any]) -> RunRecord:
    data = dict(row._mapping)
    data["counts"] = json.loads(data["counts"])
    data["started_at"] = _utc(data["started_at"])
    data["finished_at"] = _utc(data["finished_at"])
    return RunRecord.model_validate(data)


class RunLog:
    """The deployment's run history table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, record: RunRecord) -> None:
        """Insert the run, or replace what its task id showed before."""
        self._write([record], replace=True)

    def save_many(self, records: Iterable[RunRecord]) -> int:
        """``save`` for several runs in one transaction; returns how many were written."""
        return self._write(list(records), replace=True)

    def import_many(self, records: Iterable[RunRecord]) -> int:
        """Add runs not known yet (an existing task id keeps its newer row); returns added."""
        return self._write(list(records), replace=False)

    def _write(self, records: list[RunRecord], replace: bool) -> int:
        if not records:
            return 0

        def write() -> int:
            with self.db.engine.begin() as conn:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                insert = dialect.insert(sync_runs)
                if replace:
                    stmt = insert.on_conflict_do_update(
                        index_elements=["task_id"],
                        set_={c: insert.excluded[c] for c in COLUMNS if c != "task_id"},
                    )
                else:
                    stmt = insert.on_conflict_do_nothing(index_elements=["task_id"])
                rows = [_row(r) for r in records]
                written = 0  # counted from RETURNING: an executemany's rowcount may be -1
                for start in range(0, len(rows), 500):
                    written += len(
                        conn.execute(
                            stmt.returning(sync_runs.c.task_id), rows[start : start + 500]
                        ).all()
                    )
                return written

        return self.db.guard(write)

    def recent(
        self,
        company: str,
        limit: int = 50,
        *,
        status: str | None = None,
        kind: str | None = None,
        project: str | None = None,
        since: datetime | None = None,
    ) -> list[RunRecord]:
        """The company's runs, newest first, filtered."""
        t = sync_runs
        query = select(t).where(t.c.company == company)
        if status is not None:
            query = query.where(t.c.status == status)
        if kind is not None:
            query = query.where(t.c.kind == kind)
        if project is not None:
            query = query.where(t.c.project == project)
        if since is not None:  # stored as UTC; SQLite would drop any other offset unconverted
            query = query.where(t.c.started_at >= since.astimezone(UTC))
        query = query.order_by(t.c.started_at.desc(), t.c.task_id.desc()).limit(limit)

        def read() -> list[RunRecord]:
            with self.db.engine.connect() as conn:
                return [_record(row) for row in conn.execute(query)]

        return self.db.guard(read)

    def prune(self, before: datetime) -> int:
        """Delete runs that started before ``before``; returns how many."""

        def write() -> int:
            with self.db.engine.begin() as conn:
                result = conn.execute(
                    delete(sync_runs).where(sync_runs.c.started_at < before.astimezone(UTC))
                )
                return int(result.rowcount)

        return self.db.guard(write)
