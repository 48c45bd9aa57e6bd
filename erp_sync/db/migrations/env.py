"""Alembic's environment: migrations run on the connection ``Database.upgrade`` hands over.

There is no alembic.ini: ``erp-sync db upgrade`` is the one way to migrate, so the URL comes from
``ERP_SYNC_DATABASE_URL`` like everywhere else, and logging stays the CLI's.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from erp_sync.db.schema import metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError("run migrations with `erp-sync db upgrade`")
run(_connection)
