"""Project-level syncs (queue ``project``): job costs every two hours, payments on their cadence."""

from __future__ import annotations

from typing import Any

from celery import Task

from config.models import SyncKind
from erp_sync.infra.slots import TASK_NAMES
from tasks import TASK_OPTIONS, perform
from worker import app


@app.task(  # type: ignore[untyped-decorator]
    name=TASK_NAMES[SyncKind.JOB_COSTS], **TASK_OPTIONS
)
def sync_job_costs(
    self: Task,
    *,
    company: str,
    slot: str,
    project: str,
    trigger: str = "schedule",
    deferrals: int = 0,
    ticket: float | None = None,
) -> dict[str, Any]:
    """Sync Project Job Costs: standard and project cost codes plus the project's job costs."""
    return perform(self, SyncKind.JOB_COSTS, company, slot, trigger, project, deferrals, ticket)


@app.task(  # type: ignore[untyped-decorator]
    name=TASK_NAMES[SyncKind.PAYMENTS], **TASK_OPTIONS
)
def sync_invoice_payments(
    self: Task,
    *,
    company: str,
    slot: str,
    project: str,
    trigger: str = "schedule",
    deferrals: int = 0,
    ticket: float | None = None,
) -> dict[str, Any]:
    """Sync Payments for Synced Invoices: ERP bill payments as Payments Issued per commitment."""
    return perform(self, SyncKind.PAYMENTS, company, slot, trigger, project, deferrals, ticket)
