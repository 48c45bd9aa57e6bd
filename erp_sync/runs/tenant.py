"""Which tenant a run belongs to, so that nothing of it is written once that tenant is gone.

A company id is not a tenant: ``company remove`` and a later ``company add`` under the same id
make a new tenant that must inherit nothing of the old one, and a sync of the old one may still
be running. The tenant is told apart by its record's ``created_at`` as stored (a company
renamed keeps it; a company added again gets a new one), and for a project-level sync by the
project record's too (``project remove`` then ``project add``). A run reads both with its facts;
every write it makes afterwards in Redis (its watermark, its final record and summary, its
heartbeat) goes through a script that checks them in the same atomic step (``_tenant.lua``) and
writes nothing when they no longer match; before each page it writes to the database it reads
them again (``check``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from config.keys import KeySpace
from config.models import tenant_stamp
from erp_sync.errors import TenantGone

GONE_ERROR = "company removed during the run"
PROJECT_GONE_ERROR = "project removed during the run"


@dataclass(frozen=True)
class Tenant:
    """A run's company (and project) as it found them when it started."""

    company: str  # the company's created_at as stored
    project: str | None = None  # the project id (a project-level sync), else None
    project_stamp: str = ""  # the project's created_at as stored

    @classmethod
    def of(cls, company_raw: str | None, project: str | None, project_raw: str | None) -> Tenant:
        """The tenant of the records a run's facts read (``project`` None: company-level). A
        record that was not there is not checked (the run is skipped for it anyway)."""
        found = tenant_stamp(project_raw) if project else ""
        return cls(tenant_stamp(company_raw), project if found else None, found)

    def args(self) -> list[str]:
        """``_tenant.lua``'s three arguments: company stamp, project id, project stamp."""
        return [self.company, self.project or "", self.project_stamp]


def check(client: redis.Redis, keys: KeySpace, company: str, tenant: Tenant) -> None:
    """Raise ``TenantGone`` if the run's company (or project) is gone now: read before each page
    is written to the database, so a removed tenant's sync writes no page after the one in
    flight. (Not atomic with that write: the database is another store; the writes to Redis
    are checked atomically by the scripts.)"""
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.company(company))
    pipe.hget(keys.projects(company), tenant.project or "-")
    raw_company, raw_project = pipe.execute()
    if tenant.company and tenant_stamp(raw_company) != tenant.company:
        raise TenantGone(GONE_ERROR)
    if tenant.project and tenant_stamp(raw_project) != tenant.project_stamp:
        raise TenantGone(PROJECT_GONE_ERROR)


def gone_error(which: str) -> str:
    """The run's error for ``_tenant.lua``'s answer (``company`` or ``project``)."""
    return PROJECT_GONE_ERROR if which == "project" else GONE_ERROR
