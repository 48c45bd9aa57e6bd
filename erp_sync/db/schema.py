"""The database schema (SQLAlchemy Core): the Procore side of every sync and the run history.

Redis keeps what it is good at (settings, schedule, queues, locks, markers, rate limits); the
platform's business data lives here, where it can be queried, backed up and kept for years.

Every Procore-side table is keyed by (company, ERP id) or (company, project, ERP id) and has:
- the Procore-mapped fields the connector contract names, as typed columns (for queries);
- ``data``: the whole record as canonical JSON (sorted keys), which is what "changed" compares,
  so fields a connector adds beyond the typed ones are kept and noticed too;
- ``first_seen`` / ``last_changed`` (UTC), ``deleted_in_erp`` (an ERP deletion marks the row,
  it never drops it) and ``version`` (1 when created, +1 per change: how an upsert tells
  created from updated on both dialects, without PostgreSQL-only tricks such as ``xmax``).

Changing anything here needs an Alembic migration in ``erp_sync/db/migrations/versions``
(``tests/test_db_schema.py`` fails when the two disagree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = 200  # longest company, project or ERP id stored


@dataclass(frozen=True)
class Collection:
    """One Procore-side collection: its table and the record fields that are typed columns."""

    name: str
    table: Table
    project_level: bool
    fields: tuple[str, ...]


def _records_table(name: str, project_level: bool, *typed: Column[Any]) -> Collection:
    keys = [Column("company", String(ID), primary_key=True)]
    if project_level:
        keys.append(Column("project", String(ID), primary_key=True))
    table = Table(
        name,
        metadata,
        *keys,
        Column("erp_id", String(ID), primary_key=True),
        *typed,
        Column("data", Text, nullable=False),
        Column("first_seen", DateTime(timezone=True), nullable=False),
        Column("last_changed", DateTime(timezone=True), nullable=False),
        Column("deleted_in_erp", Boolean, nullable=False, default=False),
        Column("version", Integer, nullable=False, default=1),
    )
    return Collection(name, table, project_level, tuple(c.name for c in typed))


def _text(name: str) -> Column[Any]:
    return Column(name, Text)


COLLECTIONS: dict[str, Collection] = {
    c.name: c
    for c in (
        _records_table(
            "vendors",
            False,
            _text("name"),
            Column("active", Boolean),
            _text("tax_id"),
            _text("city"),
        ),
        _records_table("jobs", False, _text("name"), _text("status")),
        _records_table("cost_codes", False, _text("description")),
        _records_table("project_cost_codes", True, _text("description")),
        _records_table(
            "job_costs",
            True,
            _text("job"),
            _text("cost_code"),
            _text("cost_type"),
            Column("amount_cents", BigInteger),
            _text("description"),
        ),
        _records_table(
            "payments",
            True,
            _text("invoice"),
            _text("commitment"),
            Column("amount_cents", BigInteger),
            _text("check_number"),
        ),
    )
}

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("task_id", String(300), primary_key=True),
    Column("company", String(ID), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("project", String(ID)),
    Column("scheduled_for", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(20), nullable=False),
    Column("counts", Text, nullable=False),
    Column("error", Text),
    Column("trigger", String(20), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("duration_ms", Float),
    Index(None, "company", "started_at"),
    Index(None, "started_at"),
)

# --- what a connector mirrors from an ERP whose API cannot filter by project ---------------
# QuickBooks Online's transactions (bills, expenses, vendor credits, bill payments) name the
# project on each line, and its API cannot ask for one project's lines. So a connector reads a
# company's changed transactions once and keeps the project lines here; every project's job-cost
# and payment sync then pages its own lines from this table (by ``seq``, a per-company sequence
# that grows with every change), instead of reading the whole company from the ERP per project.
erp_lines = Table(
    "erp_lines",
    metadata,
    Column("company", String(ID), primary_key=True),
    Column("kind", String(20), primary_key=True),  # job_costs | payments
    Column("project", String(ID), primary_key=True),
    Column("erp_id", String(ID), primary_key=True),
    Column("txn", String(ID), nullable=False),  # "<entity>:<ERP id>" the line came from
    Column("seq", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("data", Text, nullable=False),
    Index(None, "company", "kind", "project", "seq"),
    Index(None, "company", "txn"),
)

# Per company and source, how far the mirror has read (a watermark, and a cursor while a
# refresh is under way: a refresh deferred by the rate limit resumes where it stopped).
erp_mirror = Table(
    "erp_mirror",
    metadata,
    Column("company", String(ID), primary_key=True),
    Column("source", String(40), primary_key=True),
    Column("state", Text, nullable=False),
    Column("refreshed_at", DateTime(timezone=True)),
)

# --- audit entries archived out of Redis -------------------------------------------------
# Redis keeps each company's newest audit and security-log entries (and the operator log's) for
# the atomic settings write; the hourly `erp_sync.archive_audit` task moves older ones here.
# ``kind`` names the list (audit | denied | operator); ``company`` is the entry's own company
# (operator entries name one too). ``digest`` (SHA-256 of the entry's canonical JSON) makes an
# archive rerun a no-op: the same entry archived twice is one row. ``id`` grows in the order
# entries were pushed (each batch is inserted oldest first), so it is the reading order.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("company", String(ID), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),
    Column("os_user", Text),
    Column("action", Text, nullable=False),
    Column("version", Integer),
    Column("old", Text, nullable=False),
    Column("new", Text, nullable=False),
    Column("archived_at", DateTime(timezone=True), nullable=False),
    Index(None, "kind", "digest", unique=True),
    Index(None, "kind", "company", "id"),
    Index(None, "kind", "id"),
)

# --- the durable copy of what only Redis holds ------------------------------------------
# One row per scope (a company id, ``*`` for the fleet-wide pause): its configuration as Redis
# held it at revision ``rev`` (``config.snapshot.Snapshot`` as JSON, connection secrets sealed
# as stored). A row is only ever replaced by a higher revision (``erp_sync/db/config_copy.py``);
# ``removed`` marks a company removed since (its removal record is kept, so a restore does not
# bring it back). ``erp-sync restore-from-db`` rebuilds Redis from these rows.
config_copy = Table(
    "config_copy",
    metadata,
    Column("scope", String(ID), primary_key=True),
    Column("rev", BigInteger, nullable=False),
    Column("removed", Boolean, nullable=False, default=False),
    Column("data", Text, nullable=False),
    Column("copied_at", DateTime(timezone=True), nullable=False),
)
