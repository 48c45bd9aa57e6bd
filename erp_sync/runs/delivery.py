"""One delivery of a sync task as the runner sees it, and the checks made before it runs.

Pure: the facts come in as a value read in one round trip (``erp_sync.runs.facts``), so the
rules (why a delivery is skipped, which attempt it is) are plain functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from config.models import CAPABILITIES, Company, RunRecord, StoredSettings, SyncKind
from erp_sync.runs.tenant import Tenant
from erp_sync.throttle.ratelimit import RateLimit


@dataclass(frozen=True)
class Delivery:
    """What the task was given plus Celery's bookkeeping."""

    task_id: str
    company: str
    kind: SyncKind
    project: str | None
    slot: str
    trigger: str = "schedule"
    retries: int = 0  # transient-error retries so far (deferrals are not counted here)
    deferrals: int = 0  # times this delivery gave its slot back to wait
    ticket: float | None = None  # its turn in the company's rate-limit queue, if it waited
    # The company (and project) records the run found (set by the runner from its facts):
    # every write the run makes afterwards is checked against it (erp_sync.runs.tenant).
    tenant: Tenant | None = None


@dataclass(frozen=True)
class Facts:
    """What a delivery's checks read, decoded (``facts.decode`` of ``run_facts.lua``'s reply)."""

    executed: bool
    previous: RunRecord | None
    company: Company | None
    settings: StoredSettings | None
    project_exists: bool
    limit: RateLimit | None  # None when the company is gone
    watermarks: str
    redis_time: float
    paused: str | None = None  # the company's (or the fleet's) pause record, JSON
    opted_out: bool = False  # the project is out of job-cost syncing
    tenant: Tenant | None = None  # the company (and project) records as read (their stamps)


class RunClock:
    """Redis time as read with the facts, extended by the monotonic clock (a datetime)."""

    def __init__(self, redis_time: float) -> None:
        self.base, self.mono = redis_time, time.monotonic()

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.base + time.monotonic() - self.mono, UTC)


def attempt_of(previous: RunRecord | None) -> int:
    """This delivery's attempt number: a deferred attempt continues, anything else counts one."""
    if previous is None:
        return 1
    return previous.attempt if previous.status == "deferred" else previous.attempt + 1


def skip_reason(d: Delivery, facts: Facts) -> str | None:
    """Why a delivery must not run: company/project gone, sync unsupported or switched off."""
    company = facts.company
    if company is None:
        return f"company {d.company!r} no longer exists"
    if d.kind not in CAPABILITIES[company.erp]:
        return f"{company.erp.value} does not support the {d.kind.value} sync"
    if d.trigger != "manual" and (
        facts.settings is None or d.kind not in facts.settings.settings.enabled_kinds()
    ):
        return f"the {d.kind.value} sync is switched off in {d.company!r}'s settings"
    if d.kind.project_level and (d.project is None or not facts.project_exists):
        return f"project {d.project!r} no longer exists in {d.company!r}"
    # A slot queued just before a pause or an opt-out: beat sends nothing after the command
    # returns, and what was already queued is skipped here. A manual run is the admin's own
    # (sync-now refuses a paused company without --force).
    if d.trigger != "manual" and facts.paused:
        return f"{d.company!r} is paused{_pause_reason(facts.paused)}"
    if d.trigger != "manual" and d.kind is SyncKind.JOB_COSTS and facts.opted_out:
        return f"project {d.project!r} is opted out of job-cost syncing"
    return None


def _pause_reason(raw: str) -> str:
    """`` (by alice; ERP maintenance)`` from a pause record (nothing if it is unreadable)."""
    try:
        record = json.loads(raw)
    except ValueError:
        return ""
    if not isinstance(record, dict):
        return ""
    parts = [f"by {record['by']}" if record.get("by") else None, record.get("reason")]
    shown = [str(p) for p in parts if p]
    return f" ({'; '.join(shown)})" if shown else ""
