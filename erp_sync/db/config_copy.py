"""The database's durable copy of every scope's configuration (``config_copy``), by revision.

A row is replaced only by a snapshot of a higher revision, in one statement
(``UPDATE ... WHERE rev < new``, else an insert that a concurrent writer's row makes a no-op), so
two copiers racing, or a late one holding an old snapshot, never move the copy backwards.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import exc, insert, select, update

from config.snapshot import Snapshot
from erp_sync.db.engine import Database
from erp_sync.db.schema import config_copy


class ConfigCopy:
    """The copy of one deployment's configuration in its database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, snap: Snapshot) -> bool:
        """Store ``snap`` unless the copy already holds its scope at this revision or newer;
        returns whether it was stored."""
        t = config_copy
        values = {
            "rev": snap.rev,
            "removed": snap.gone,
            "data": snap.model_dump_json(),
            "copied_at": datetime.now(UTC),
        }

        def write() -> bool:
            with self.db.engine.begin() as conn:
                newer = update(t).where(t.c.scope == snap.scope, t.c.rev < snap.rev)
                if conn.execute(newer.values(**values)).rowcount:
                    return True
                if conn.execute(select(t.c.rev).where(t.c.scope == snap.scope)).first():
                    return False  # held at this revision or a newer one
            try:
                with self.db.engine.begin() as conn:
                    conn.execute(insert(t).values(scope=snap.scope, **values))
                return True
            except exc.IntegrityError:  # another copier inserted it first: retry as update
                return write()

        return self.db.guard(write)

    def rev(self, scope: str) -> int:
        """The revision the copy holds ``scope`` at (0: none)."""

        def read() -> int:
            with self.db.engine.connect() as conn:
                row = conn.execute(select(config_copy.c.rev).where(config_copy.c.scope == scope))
                found = row.first()
            return 0 if found is None else int(found.rev)

        return self.db.guard(read)

    def get(self, scope: str) -> Snapshot | None:
        def read() -> Snapshot | None:
            with self.db.engine.connect() as conn:
                row = conn.execute(
                    select(config_copy.c.data).where(config_copy.c.scope == scope)
                ).first()
            return None if row is None else Snapshot.model_validate_json(row.data)

        return self.db.guard(read)

    def all(self) -> list[Snapshot]:
        """Every scope's newest copy: the fleet first, then companies by id."""

        def read() -> list[Snapshot]:
            with self.db.engine.connect() as conn:
                rows = conn.execute(select(config_copy.c.data).order_by(config_copy.c.scope))
                found = [Snapshot.model_validate_json(r.data) for r in rows]
            return sorted(found, key=lambda s: (s.scope != "*", s.scope))

        return self.db.guard(read)
