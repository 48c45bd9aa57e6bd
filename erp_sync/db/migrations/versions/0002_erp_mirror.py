"""The ERP mirror: project lines of transactions an ERP cannot list per project.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erp_lines",
        sa.Column("company", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("erp_id", sa.String(length=200), nullable=False),
        sa.Column("txn", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("company", "kind", "project", "erp_id", name=op.f("pk_erp_lines")),
    )
    op.create_table(
        "erp_mirror",
        sa.Column("company", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("company", "source", name=op.f("pk_erp_mirror")),
    )
    op.create_index(
        op.f("ix_erp_lines_company_kind_project_seq"),
        "erp_lines",
        ["company", "kind", "project", "seq"],
        unique=False,
    )
    op.create_index(op.f("ix_erp_lines_company_txn"), "erp_lines", ["company", "txn"], unique=False)


def downgrade() -> None:
    op.drop_table("erp_mirror")
    op.drop_table("erp_lines")
