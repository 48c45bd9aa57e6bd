"""The Procore side of a sync, in the database: one company's collections, upserted by ERP id.

A page is written in one transaction: its new or changed records (one batched
``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the stored row differs, on SQLite and PostgreSQL
alike) and its ERP deletions (the rows are marked ``deleted_in_erp``, never dropped). A record
equal to the stored one is not touched at all, so a sync with no ERP change writes zero rows.
The counts come from the database: the rows the upsert returned (``version`` 1: created,
above: updated), the rest of the page unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    Table,
    TextClause,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from erp_sync.db.engine import Database
from erp_sync.db.schema import COLLECTIONS, Collection

Record = dict[str, Any]  # a record as connectors give it (erp_sync.connectors.base.Record)


@dataclass
class Counts:
    """What one sync did to the Procore side."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0

    def add(self, other: Counts) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.deleted += other.deleted

    def as_dict(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
        }


@dataclass
class Drift:
    """Differences between the ERP and the Procore side for one collection."""

    missing: list[str] = field(default_factory=list)  # in the ERP, not on the Procore side
    extra: list[str] = field(default_factory=list)  # on the Procore side, not in the ERP
    different: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different)


def canonical(record: Record) -> str:
    """A record as stored and compared: JSON with sorted keys, no whitespace."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def collection(name: str) -> Collection:
    try:
        return COLLECTIONS[name]
    except KeyError:
        raise ValueError(f"unknown Procore-side collection {name!r}") from None


def _typed(table: Table, name: str, value: Any) -> Any:
    """A record field as its typed column stores it (the full record stays in ``data``)."""
    if value is None:
        return None
    kind = table.c[name].type
    if isinstance(kind, BigInteger):
        return int(value)
    if isinstance(kind, Boolean):
        return bool(value)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# PostgreSQL: one upsert per page whose rows arrive as one array per column (``unnest``). The
# same upsert as a multi-row VALUES statement carries 13 parameters per row (13,000 a page),
# which psycopg converts and the server parses and plans again on every page: measured 120-150
# ms a page against about 30 ms this way (bench/db_upsert.py). The statement text is the same
# for every page, so it is prepared once per connection.
_PG_ARRAY = {"BIGINT": "bigint[]", "BOOLEAN": "boolean[]", "INTEGER": "integer[]"}
_pg_statements: dict[str, TextClause] = {}


def _pg_upsert(c: Collection) -> TextClause:
    if c.name not in _pg_statements:
        t = c.table
        keys = ["company", *(["project"] if c.project_level else [])]
        arrays = ["erp_id", *c.fields, "data"]
        cast = ", ".join(
            f"CAST(:{n} AS {_PG_ARRAY.get(str(t.c[n].type), 'text[]')})" for n in arrays
        )
        changed = ", ".join(f"{n} = excluded.{n}" for n in (*c.fields, "data", "last_changed"))
        _pg_statements[c.name] = text(
            f"INSERT INTO {t.name} ({', '.join([*keys, *arrays])}, first_seen, last_changed, "
            f"deleted_in_erp, version) "
            f"SELECT {', '.join(f':{k}' for k in keys)}, {', '.join(f'u.{n}' for n in arrays)}, "
            f":at, :at, false, 1 FROM unnest({cast}) AS u({', '.join(arrays)}) "
            f"ON CONFLICT ({', '.join([*keys, 'erp_id'])}) DO UPDATE SET {changed}, "
            f"deleted_in_erp = false, version = {t.name}.version + 1 "
            f"WHERE {t.name}.data <> excluded.data OR {t.name}.deleted_in_erp "
            f"RETURNING version"
        )
    return _pg_statements[c.name]


def _columns(c: Collection, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's rows as one list per column (the shared values once)."""
    first = rows[0]
    params: dict[str, Any] = {"company": first["company"], "at": first["first_seen"]}
    if c.project_level:
        params["project"] = first["project"]
    for name in ("erp_id", *c.fields, "data"):
        params[name] = [r[name] for r in rows]
    return params


class RecordStore:
    """One company's Procore-side collections in the database."""

    def __init__(self, db: Database, company: str) -> None:
        self.db, self.company = db, company

    def _scope(self, c: Collection, project: str | None) -> list[ColumnElement[bool]]:
        if c.project_level and project is None:
            raise ValueError(f"{c.name} is per project and needs a project")
        where = [c.table.c.company == self.company]
        if c.project_level:
            where.append(c.table.c.project == project)
        return where

    def write_page(
        self,
        name: str,
        project: str | None,
        records: Iterable[Record],
        deleted: Sequence[str] = (),
        now: datetime | None = None,
    ) -> Counts:
        """Write one page's changes in one transaction (all of it, or none of it)."""
        c = collection(name)
        self._scope(c, project)  # a project-level page needs its project: refused up front
        batch = {str(r["id"]): r for r in records}  # one row per id (the last one wins)
        gone = sorted(set(deleted) - set(batch))
        if not batch and not gone:
            return Counts()
        at = now or datetime.now(UTC)

        def write() -> Counts:
            with self.db.engine.begin() as conn:
                counts = self._upsert(conn, c, project, batch, at)
                if gone:
                    counts.deleted = self._mark_deleted(conn, c, project, gone, at)
                return counts

        return self.db.guard(write)

    def import_page(
        self, name: str, project: str | None, records: Iterable[Record], now: datetime | None = None
    ) -> int:
        """Insert records not stored yet; a row already there is left exactly as it is (what
        ``db import-redis`` needs: an old copy must never overwrite what a sync wrote since).
        Returns how many were inserted."""
        c = collection(name)
        self._scope(c, project)
        batch = {str(r["id"]): r for r in records}
        if not batch:
            return 0
        rows = self._rows(c, project, batch, now or datetime.now(UTC))

        def write() -> int:
            with self.db.engine.begin() as conn:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                stmt = dialect.insert(c.table).on_conflict_do_nothing().returning(c.table.c.erp_id)
                return len(conn.execute(stmt, rows).all())

        return self.db.guard(write)

    def _rows(
        self, c: Collection, project: str | None, batch: dict[str, Record], at: datetime
    ) -> list[dict[str, Any]]:
        base: dict[str, Any] = {"company": self.company}
        if c.project_level:
            base["project"] = project
        return [
            {
                **base,
                "erp_id": erp_id,
                "data": canonical(r),
                "first_seen": at,
                "last_changed": at,
                "deleted_in_erp": False,
                "version": 1,
                **{f: _typed(c.table, f, r.get(f)) for f in c.fields},
            }
            for erp_id, r in batch.items()
        ]

    def _upsert(
        self,
        conn: Connection,
        c: Collection,
        project: str | None,
        batch: dict[str, Record],
        at: datetime,
    ) -> Counts:
        if not batch:
            return Counts()
        t = c.table
        rows = self._rows(c, project, batch, at)
        if conn.dialect.name == "postgresql":
            versions = [int(v) for v in conn.execute(_pg_upsert(c), _columns(c, rows)).scalars()]
            created = sum(1 for v in versions if v == 1)
            return Counts(
                created=created,
                updated=len(versions) - created,
                unchanged=len(batch) - len(versions),
            )
        insert = sqlite.insert(t)
        new = insert.excluded
        stmt = insert.on_conflict_do_update(
            index_elements=[col.name for col in t.primary_key.columns],
            set_={
                **{f: new[f] for f in (*c.fields, "data", "last_changed")},
                "deleted_in_erp": False,
                "version": t.c.version + 1,
            },
            where=or_(t.c.data != new.data, t.c.deleted_in_erp.is_(True)),
        ).returning(t.c.version)
        versions = [int(v) for v in conn.execute(stmt, rows).scalars()]
        created = sum(1 for v in versions if v == 1)
        return Counts(
            created=created, updated=len(versions) - created, unchanged=len(batch) - len(versions)
        )

    def _mark_deleted(
        self, conn: Connection, c: Collection, project: str | None, ids: list[str], at: datetime
    ) -> int:
        t = c.table
        result = conn.execute(
            update(t)
            .where(*self._scope(c, project), t.c.erp_id.in_(ids), t.c.deleted_in_erp.is_(False))
            .values(deleted_in_erp=True, last_changed=at, version=t.c.version + 1)
        )
        return int(result.rowcount)

    def all(
        self, name: str, project: str | None = None, include_deleted: bool = False
    ) -> dict[str, Record]:
        """The collection's records by ERP id (live ones unless ``include_deleted``)."""
        c = collection(name)
        query = select(c.table.c.erp_id, c.table.c.data).where(*self._scope(c, project))
        if not include_deleted:
            query = query.where(c.table.c.deleted_in_erp.is_(False))

        def read() -> dict[str, Record]:
            with self.db.engine.connect() as conn:
                return {str(i): json.loads(d) for i, d in conn.execute(query)}

        return self.db.guard(read)

    def drift(self, name: str, project: str | None, erp_records: Iterable[Record]) -> Drift:
        """Compare the live collection with the ERP's full listing (reconciliation)."""
        erp = {str(r["id"]): canonical(r) for r in erp_records}
        ours = {i: canonical(r) for i, r in self.all(name, project).items()}
        return Drift(
            missing=sorted(set(erp) - set(ours)),
            extra=sorted(set(ours) - set(erp)),
            different=sorted(i for i in set(erp) & set(ours) if erp[i] != ours[i]),
        )
