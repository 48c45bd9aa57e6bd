"""Helpers shared by the worker tests: a company with a small, fast sandbox ERP."""

from __future__ import annotations

import redis

from config.keys import KeySpace
from config.models import Erp
from config.store import SettingsStore
from erp_sync.connectors.sandbox_data import SandboxData
from erp_sync.ratelimit import set_limit

SMALL = {"vendors": 30, "cost_codes": 12, "extra_jobs": 2, "project_cost_codes": 4,
         "costs_per_job": 25, "invoices_per_job": 6, "page_size": 10}


def small_company(client: redis.Redis, keys: KeySpace, company: str = "acme",
                  erp: str = "xero", projects: tuple[str, ...] = ("p1",),
                  **sandbox: object) -> SandboxData:
    """A company with projects, an admin ``alice``, a small sandbox and no practical rate limit."""
    store = SettingsStore(client, keys)
    store.add_company(company, erp)
    for project in projects:
        store.add_project(company, project)
    store.grant(company, "alice", "admin")
    data = SandboxData(client, keys)
    data.configure(company, **{**SMALL, **sandbox})
    set_limit(client, keys, Erp(erp).value, 10_000, 10_000)
    return data
