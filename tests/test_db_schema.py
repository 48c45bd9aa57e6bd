"""The Alembic migrations build exactly the schema ``erp_sync/db/schema.py`` declares.

A column added to the metadata without a migration (or the reverse) would pass every test on a
freshly created schema and fail on every upgraded deployment; Alembic's own comparison catches
it here, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from erp_sync.db import Database
from erp_sync.db.engine import head_revision, known_revisions
from erp_sync.db.schema import metadata


@pytest.mark.integration
def test_the_migrations_match_the_declared_schema(any_db: Database) -> None:
    with any_db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


def test_the_migrations_form_one_line_ending_at_the_head() -> None:
    assert head_revision() in known_revisions()
    assert known_revisions() == {f"{n:04d}" for n in range(1, len(known_revisions()) + 1)}
