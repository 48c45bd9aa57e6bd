"""Reads of the database that only tests and benchmarks make, kept out of the product's classes.

Plain functions over the tables ``erp_sync/db/schema.py`` declares, with SQLAlchemy, as the
product reads them: what a test asserts on after a sync, an import or a prune.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import func, select

from config.models import RunRecord
from erp_sync.connectors.base import Record
from erp_sync.db import Counts, Database, RecordStore
from erp_sync.db.audit import Kind
from erp_sync.db.records import collection
from erp_sync.db.schema import audit_log, sync_runs


def deleted_ids(store: RecordStore, name: str, project: str | None = None) -> set[str]:
    """The ERP ids of ``store``'s company that collection ``name`` has marked deleted."""
    c = collection(name)
    if c.project_level and project is None:
        raise ValueError(f"{c.name} is per project and needs a project")
    t = c.table
    query = select(t.c.erp_id).where(t.c.company == store.company, t.c.deleted_in_erp.is_(True))
    if c.project_level:
        query = query.where(t.c.project == project)
    with store.db.engine.connect() as conn:
        return {str(i) for i in conn.execute(query).scalars()}


def payments_by_commitment(store: RecordStore, project: str) -> dict[str, list[Record]]:
    """The project's Payments Issued grouped by commitment, as its commitments show them."""
    out: dict[str, list[Record]] = {}
    for record in store.all("payments", project).values():
        out.setdefault(str(record.get("commitment")), []).append(record)
    return out


def written(counts: Counts) -> int:
    """The rows a sync's counts say it wrote: created, updated and marked deleted."""
    return counts.created + counts.updated + counts.deleted


def _utc(value: datetime) -> datetime:
    """Datetimes come back naive from SQLite and in the session's zone from PostgreSQL."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def run_record(db: Database, task_id: str) -> RunRecord | None:
    """The run history's row for ``task_id`` (``sync_runs``), as the record it was saved from."""
    with db.engine.connect() as conn:
        row = conn.execute(select(sync_runs).where(sync_runs.c.task_id == task_id)).first()
    if row is None:
        return None
    data = dict(row._mapping)
    data["counts"] = json.loads(data["counts"])
    data["started_at"] = _utc(data["started_at"])
    if data["finished_at"] is not None:
        data["finished_at"] = _utc(data["finished_at"])
    return RunRecord.model_validate(data)


def run_count(db: Database, company: str | None = None) -> int:
    """Rows in the run history, the deployment's or one company's."""
    query = select(func.count()).select_from(sync_runs)
    if company is not None:
        query = query.where(sync_runs.c.company == company)
    with db.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def archived_count(db: Database, kind: Kind, company: str | None = None) -> int:
    """Archived audit entries (``audit_log``) of one kind, the deployment's or one company's."""
    query = select(func.count()).select_from(audit_log).where(audit_log.c.kind == kind)
    if company is not None:
        query = query.where(audit_log.c.company == company)
    with db.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
