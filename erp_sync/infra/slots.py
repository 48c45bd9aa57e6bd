"""The contract between beat and the workers: task names, queues, task ids and arguments.

A slot is one scheduled run of one sync, identified by (company, kind, project, slot time). Its
Celery task id is derived from exactly that, so the same slot always has the same id: beat can
never dispatch it under two ids, and a worker can recognise a redelivered duplicate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from config.models import SyncKind

TASK_NAMES: dict[SyncKind, str] = {
    SyncKind.VENDORS: "tasks.company.refresh_vendors",
    SyncKind.JOBS: "tasks.company.refresh_jobs",
    SyncKind.JOB_COSTS: "tasks.project.sync_job_costs",
    SyncKind.PAYMENTS: "tasks.project.sync_invoice_payments",
}
KIND_OF_TASK: dict[str, SyncKind] = {name: kind for kind, name in TASK_NAMES.items()}
COMPANY_QUEUE = "company"
PROJECT_QUEUE = "project"
# Alert webhooks and periodic housekeeping (DESIGN.md); the company workers consume it too
# unless an operator gives it workers of its own.
ALERTS_QUEUE = "alerts"


def queue_for(kind: SyncKind) -> str:
    return PROJECT_QUEUE if kind.project_level else COMPANY_QUEUE


def slot_iso(slot_ts: float) -> str:
    """The slot time as shown to people and stored in history (UTC, second precision)."""
    return datetime.fromtimestamp(slot_ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def task_id(company: str, kind: SyncKind, project: str | None, slot_ts: float) -> str:
    """Deterministic id of a scheduled slot's task (readable in Flower)."""
    return f"sync:{company}:{kind.value}:{project or '-'}:{int(slot_ts)}"


def parse_task_id(value: str) -> tuple[str, SyncKind, str | None, int]:
    """(company, kind, project or None, slot epoch seconds) of an id made by ``task_id``."""
    head, company, kind, project, slot = value.split(":")
    if head != "sync":
        raise ValueError(f"not a scheduled slot's task id: {value!r}")
    return company, SyncKind(kind), None if project == "-" else project, int(slot)


def task_kwargs(
    company: str, kind: SyncKind, project: str | None, slot_ts: float, trigger: str = "schedule"
) -> dict[str, Any]:
    """Keyword arguments of a sync task; project-level tasks also get ``project``."""
    kwargs: dict[str, Any] = {"company": company, "slot": slot_iso(slot_ts), "trigger": trigger}
    if kind.project_level:
        kwargs["project"] = project
    return kwargs
