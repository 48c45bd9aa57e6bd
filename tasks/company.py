"""Company-level syncs (queue ``company``): the ERP's vendor list and job list, hourly."""

from __future__ import annotations

from typing import Any

from celery import Task

from config.models import SyncKind
from erp_sync.infra.slots import TASK_NAMES
from tasks import TASK_OPTIONS, perform
from worker import app


@app.task(  # type: ignore[untyped-decorator]
    name=TASK_NAMES[SyncKind.VENDORS], **TASK_OPTIONS
)
def refresh_vendors(
    self: Task,
    *,
    company: str,
    slot: str,
    trigger: str = "schedule",
    deferrals: int = 0,
    ticket: float | None = None,
) -> dict[str, Any]:
    """Refresh ERP Companies List: the ERP's vendors into the Procore vendor directory."""
    return perform(
        self, SyncKind.VENDORS, company, slot, trigger, deferrals=deferrals, ticket=ticket
    )


@app.task(  # type: ignore[untyped-decorator]
    name=TASK_NAMES[SyncKind.JOBS], **TASK_OPTIONS
)
def refresh_jobs(
    self: Task,
    *,
    company: str,
    slot: str,
    trigger: str = "schedule",
    deferrals: int = 0,
    ticket: float | None = None,
) -> dict[str, Any]:
    """Refresh ERP Job List: the ERP's jobs into the Procore job list."""
    return perform(self, SyncKind.JOBS, company, slot, trigger, deferrals=deferrals, ticket=ticket)
