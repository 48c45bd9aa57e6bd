"""Reads of the database that only tests and benchmarks make, kept out of the product's classes.

Plain functions over the tables ``erp_sync/db/schema.py`` declares, with SQLAlchemy, as the
product reads them: what a test asserts on after a sync, an import or a prune.
"""

from __future__ import annotations

from sqlalchemy import select

from erp_sync.connectors.base import Record
from erp_sync.db import Counts, RecordStore
from erp_sync.db.records import collection


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
