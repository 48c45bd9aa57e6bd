"""Stored state as pydantic models, validated on the way into and out of Redis.

Also the ERP capability matrix as data: which automatic syncs each ERP supports.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from config.errors import CorruptRecord
from config.validation import shorten

M = TypeVar("M", bound=BaseModel)


def first_error(exc: ValidationError) -> str:
    """One readable line out of a pydantic error: the field and what was wrong."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg


def parse(model: type[M], raw: str | bytes, what: str) -> M:
    """A stored record read back through its model; ``CorruptRecord`` names ``what`` if invalid."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise CorruptRecord(f"stored {what} is corrupt ({first_error(exc)})") from None


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def _identifier(value: str) -> str:
    # Ids become key segments, so no ':' or spaces; a clear message beats a broken key.
    if not _ID.fullmatch(value):
        raise ValueError(
            f"{shorten(value)} is not a valid id (1-64 letters, digits, '_', '.', '-'; "
            "starting with a letter or digit)"
        )
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, too long
        raise ValueError(
            f"{shorten(value)} is not an IANA time zone (e.g. America/Chicago)"
        ) from None
    return value


def is_identifier(value: str) -> bool:
    """Whether ``value`` is a valid company or project id (a key segment, no ':')."""
    return _ID.fullmatch(value) is not None


Identifier = Annotated[str, AfterValidator(_identifier)]
TimeZoneName = Annotated[str, AfterValidator(_timezone)]


class Erp(StrEnum):
    QUICKBOOKS_DESKTOP = "quickbooks_desktop"
    QUICKBOOKS_ONLINE = "quickbooks_online"
    XERO = "xero"
    NETSUITE = "netsuite"
    SAGE_100 = "sage_100"
    SAGE_300_CRE = "sage_300_cre"
    VIEWPOINT_VISTA = "viewpoint_vista"
    VIEWPOINT_SPECTRUM = "viewpoint_spectrum"
    SAGE_INTACCT = "sage_intacct"
    CMIC = "cmic"
    ACUMATICA = "acumatica"
    YARDI = "yardi"
    MRI = "mri"
    WORKDAY = "workday"


class SyncKind(StrEnum):
    """The four automatic syncs. Values are the task-name suffix-free short names."""

    VENDORS = "vendors"
    JOBS = "jobs"
    JOB_COSTS = "job_costs"
    PAYMENTS = "payments"

    @property
    def project_level(self) -> bool:
        return self in (SyncKind.JOB_COSTS, SyncKind.PAYMENTS)


class PaymentsFrequency(StrEnum):
    HOURLY = "hourly"
    EVERY_2_HOURS = "every_2_hours"
    EVERY_4_HOURS = "every_4_hours"
    DAILY = "daily"
    NEVER = "never"


class PermissionLevel(StrEnum):
    NONE = "none"
    READ_ONLY = "read_only"
    STANDARD = "standard"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(PermissionLevel).index(self)


_ALL = frozenset(SyncKind)
_NO_PAYMENTS = _ALL - {SyncKind.PAYMENTS}

CAPABILITIES: dict[Erp, frozenset[SyncKind]] = {
    Erp.QUICKBOOKS_DESKTOP: _ALL,
    Erp.QUICKBOOKS_ONLINE: _ALL,
    Erp.XERO: _ALL,
    Erp.NETSUITE: _ALL,
    Erp.SAGE_100: _NO_PAYMENTS,
    Erp.SAGE_300_CRE: _NO_PAYMENTS,
    Erp.VIEWPOINT_VISTA: _ALL,
    Erp.VIEWPOINT_SPECTRUM: _NO_PAYMENTS,
    Erp.SAGE_INTACCT: _ALL,
    Erp.CMIC: frozenset({SyncKind.JOB_COSTS}),
    Erp.ACUMATICA: _ALL,
    Erp.YARDI: _ALL,
    Erp.MRI: _ALL,
    Erp.WORKDAY: _NO_PAYMENTS,
}

# Which stored setting switches which sync on (the payments frequency also needs payments).
TOGGLES: dict[str, SyncKind] = {
    "refresh_erp_companies_list": SyncKind.VENDORS,
    "refresh_erp_job_list": SyncKind.JOBS,
    "sync_project_job_costs": SyncKind.JOB_COSTS,
    "sync_payments_for_synced_invoices": SyncKind.PAYMENTS,
}


class SyncSettings(BaseModel):
    """A company's sync schedule, exactly the five settings of the admin page."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    payments_for_synced_invoices: PaymentsFrequency = PaymentsFrequency.DAILY
    sync_project_job_costs: bool = True
    refresh_erp_companies_list: bool = True
    refresh_erp_job_list: bool = True
    sync_payments_for_synced_invoices: bool = True

    @classmethod
    def defaults_for(cls, erp: Erp) -> SyncSettings:
        """Every sync the ERP supports on, payments daily; unsupported syncs off."""
        supported = CAPABILITIES[erp]
        return cls(**{field: kind in supported for field, kind in TOGGLES.items()})

    def enabled_kinds(self) -> frozenset[SyncKind]:
        """The syncs that actually run (payments also need a frequency other than never)."""
        kinds = {kind for field, kind in TOGGLES.items() if getattr(self, field)}
        if self.payments_for_synced_invoices is PaymentsFrequency.NEVER:
            kinds.discard(SyncKind.PAYMENTS)
        return frozenset(kinds)


class StoredSettings(BaseModel):
    """The settings as stored: the values plus the version every write bumps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    company: Identifier
    version: int = Field(ge=1)
    settings: SyncSettings
    updated_at: datetime
    updated_by: str


class Company(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Identifier
    name: str = Field(min_length=1, max_length=200)
    erp: Erp
    timezone: TimeZoneName = "UTC"
    created_at: datetime


class Removed(BaseModel):
    """What is left of a removed company: when it went, who removed it, which ERP it had."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    company: str
    at: datetime | None  # None: removed before removals were recorded
    by: str | None
    erp: Erp | None


class Project(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    company: Identifier
    id: Identifier
    name: str = Field(min_length=1, max_length=200)
    created_at: datetime
    # Procore's "Enable ERP Job Cost Transaction Syncing" per project; off leaves the project
    # out of the job-cost fan-out.
    sync_job_costs: bool = True


class AuditEntry(BaseModel):
    """Who changed what, when: old and new values of every field that changed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    actor: str
    action: str
    company: str
    version: int | None = None
    old: dict[str, Any] = Field(default_factory=dict)
    new: dict[str, Any] = Field(default_factory=dict)
    # The operating-system user who ran the command (None on entries written before it was kept).
    os_user: str | None = None


def tenant_stamp(raw: object) -> str:
    """A stored company or project record's ``created_at`` exactly as stored (``''`` when there
    is no record or it has none): the stamp of the tenant that owns an id. A rename keeps it; a
    removal and a new ``add`` under the same id changes it. The runner (``erp_sync/runs/
    tenant.py``), the alerts and ``_tenant.lua`` compare this one field."""
    if raw is None or raw == "":
        return ""
    try:
        record = json.loads(str(raw))
    except ValueError:
        return ""
    value = record.get("created_at") if isinstance(record, dict) else None
    return value if isinstance(value, str) else ""


# ``deferred``: the run gave its worker slot back to wait and comes back under the same task id.
RunStatus = Literal["succeeded", "failed", "skipped", "running", "deferred"]


def now() -> datetime:
    """The wall clock in UTC (a run's own timestamps; schedule decisions use Redis time)."""
    return datetime.now(UTC)


class RunRecord(BaseModel):
    """One sync run, as ``history --json`` shows it (DESIGN.md fields plus task bookkeeping)."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    company: str
    project: str | None
    scheduled_for: str
    started_at: datetime
    finished_at: datetime | None = None
    status: RunStatus = "running"
    counts: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    task_id: str
    trigger: str = "schedule"
    attempt: int = 1
    duration_ms: float | None = None

    def finish(
        self,
        status: RunStatus,
        *,
        error: str | None = None,
        counts: dict[str, int] | None = None,
        at: datetime | None = None,
    ) -> RunRecord:
        end = at or now()
        return self.model_copy(
            update={
                "status": status,
                "error": error,
                "counts": counts or {},
                "finished_at": end,
                "duration_ms": round((end - self.started_at).total_seconds() * 1000, 1),
            }
        )
