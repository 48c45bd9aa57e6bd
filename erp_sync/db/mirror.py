"""The ERP mirror: project lines of a company's ERP transactions, for per-project paging.

A connector whose ERP cannot list one project's lines (QuickBooks Online) reads the company's
changed transactions once (``apply``, one transaction per page of them) and each project's sync
pages its lines from here (``page``). Every write gives the lines it touches the next numbers
of the company's sequence (``seq``), so "lines of project P changed after N" is one index range,
and a line that left a transaction (or whose transaction was deleted) is marked ``deleted``
under a new number: the project's next sync sees the deletion like any other change.

Only one refresher writes a company's lines at a time (the connector holds a Redis lock), so
the sequence is simply the company's highest number plus one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from erp_sync.db.engine import Database
from erp_sync.db.records import Record, canonical
from erp_sync.db.schema import erp_lines, erp_mirror


@dataclass(frozen=True)
class Line:
    """One project line of an ERP transaction, as the Procore side will show it."""

    kind: str  # the collection it lands in: job_costs | payments
    project: str
    record: Record

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.project, str(self.record["id"])


class Mirror:
    """One company's mirrored lines and the mirror's progress per source."""

    def __init__(self, db: Database, company: str) -> None:
        self.db, self.company = db, company

    def state(self, source: str) -> tuple[dict[str, Any], datetime | None]:
        """The source's saved progress (``{}`` before the first refresh) and when it was
        last completed."""

        def read() -> tuple[dict[str, Any], datetime | None]:
            with self.db.engine.connect() as conn:
                row = conn.execute(
                    select(erp_mirror.c.state, erp_mirror.c.refreshed_at).where(
                        erp_mirror.c.company == self.company, erp_mirror.c.source == source
                    )
                ).first()
            if row is None:
                return {}, None
            at = row.refreshed_at
            if at is not None and at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            return json.loads(row.state), at

        return self.db.guard(read)

    def apply(
        self,
        source: str,
        state: Mapping[str, Any],
        txns: Mapping[str, Iterable[Line] | None],
        completed: bool = False,
    ) -> int:
        """Replace the lines of each transaction (``None``: it was deleted) and save the
        source's progress, in one database transaction. Returns the lines written."""

        def write() -> int:
            with self.db.engine.begin() as conn:
                written = self._replace(
                    conn, {k: (None if v is None else list(v)) for k, v in txns.items()}
                )
                self._save_state(conn, source, state, completed)
                return written

        return self.db.guard(write)

    def _replace(self, conn: Connection, txns: Mapping[str, list[Line] | None]) -> int:
        if not txns:
            return 0
        t = erp_lines
        old: dict[tuple[str, str, str], tuple[str, bool, str]] = {}
        keys = list(txns)
        for start in range(0, len(keys), 500):
            rows = conn.execute(
                select(t.c.kind, t.c.project, t.c.erp_id, t.c.data, t.c.deleted, t.c.txn).where(
                    t.c.company == self.company, t.c.txn.in_(keys[start : start + 500])
                )
            )
            for kind, project, erp_id, data, deleted, txn in rows:
                old[(kind, project, erp_id)] = (data, bool(deleted), txn)
        seq = int(
            conn.execute(
                select(func.coalesce(func.max(t.c.seq), 0)).where(t.c.company == self.company)
            ).scalar_one()
        )
        upserts: list[dict[str, Any]] = []
        kept: set[tuple[str, str, str]] = set()
        for txn, lines in txns.items():
            for line in lines or []:
                kept.add(line.key)
                data = canonical(line.record)
                before = old.get(line.key)
                if before is not None and before[0] == data and not before[1]:
                    continue
                seq += 1
                upserts.append(
                    {
                        "company": self.company,
                        "kind": line.kind,
                        "project": line.project,
                        "erp_id": line.key[2],
                        "txn": txn,
                        "seq": seq,
                        "deleted": False,
                        "data": data,
                    }
                )
        gone = [k for k, (_, deleted, _) in old.items() if k not in kept and not deleted]
        if upserts:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(t)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["company", "kind", "project", "erp_id"],
                    set_={c: insert.excluded[c] for c in ("txn", "seq", "deleted", "data")},
                ),
                upserts,
            )
        for kind, project, erp_id in gone:
            seq += 1
            conn.execute(
                update(t)
                .where(
                    and_(
                        t.c.company == self.company,
                        t.c.kind == kind,
                        t.c.project == project,
                        t.c.erp_id == erp_id,
                    )
                )
                .values(deleted=True, seq=seq)
            )
        return len(upserts) + len(gone)

    def _save_state(
        self, conn: Connection, source: str, state: Mapping[str, Any], completed: bool
    ) -> None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(erp_mirror)
        values: dict[str, Any] = {
            "company": self.company,
            "source": source,
            "state": json.dumps(dict(state), sort_keys=True),
        }
        update_set: dict[str, Any] = {"state": insert.excluded.state}
        if completed:
            values["refreshed_at"] = datetime.now(UTC)
            update_set["refreshed_at"] = insert.excluded.refreshed_at
        conn.execute(
            insert.values(values).on_conflict_do_update(
                index_elements=["company", "source"], set_=update_set
            )
        )

    def page(
        self, kind: str, project: str, after: int, limit: int = 1000
    ) -> tuple[list[Record], list[str], int | None]:
        """Lines of ``project`` changed after ``after``: (live records, deleted ids, the last
        number read or None when there was nothing)."""
        t = erp_lines
        query = (
            select(t.c.erp_id, t.c.seq, t.c.deleted, t.c.data)
            .where(
                t.c.company == self.company,
                t.c.kind == kind,
                t.c.project == project,
                t.c.seq > after,
            )
            .order_by(t.c.seq)
            .limit(limit)
        )

        def read() -> tuple[list[Record], list[str], int | None]:
            with self.db.engine.connect() as conn:
                rows = conn.execute(query).all()
            items = [json.loads(r.data) for r in rows if not r.deleted]
            deleted = [str(r.erp_id) for r in rows if r.deleted]
            return items, deleted, int(rows[-1].seq) if rows else None

        return self.db.guard(read)

    def live_txns(self) -> set[str]:
        """Every transaction with a line not marked deleted."""
        t = erp_lines
        query = (
            select(t.c.txn).where(t.c.company == self.company, t.c.deleted.is_(False)).distinct()
        )

        def read() -> set[str]:
            with self.db.engine.connect() as conn:
                return {str(x) for x in conn.execute(query).scalars()}

        return self.db.guard(read)

    def projects_of(self, txns: Iterable[str]) -> dict[str, set[str]]:
        """The projects each transaction's live job-cost lines name."""
        keys = list(set(txns))
        t = erp_lines
        out: dict[str, set[str]] = {k: set() for k in keys}

        def read() -> dict[str, set[str]]:
            with self.db.engine.connect() as conn:
                for start in range(0, len(keys), 500):
                    for txn, project in conn.execute(
                        select(t.c.txn, t.c.project).where(
                            t.c.company == self.company,
                            t.c.kind == "job_costs",
                            t.c.deleted.is_(False),
                            t.c.txn.in_(keys[start : start + 500]),
                        )
                    ):
                        out[str(txn)].add(str(project))
            return out

        return self.db.guard(read)
