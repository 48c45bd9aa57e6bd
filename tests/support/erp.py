"""Helpers shared by the worker tests: a company with a small, fast sandbox ERP."""

from __future__ import annotations

from typing import Any

import redis

from config.env import Settings
from config.keys import KeySpace
from config.models import Erp, SyncKind
from erp_sync.connectors.sandbox_data import SandboxData
from erp_sync.control.store import SettingsStore
from erp_sync.infra.publish import CeleryPublisher
from erp_sync.infra.slots import TASK_NAMES, queue_for, task_kwargs
from erp_sync.throttle.ratelimit import set_limit

SMALL = {
    "vendors": 30,
    "cost_codes": 12,
    "extra_jobs": 2,
    "project_cost_codes": 4,
    "costs_per_job": 25,
    "invoices_per_job": 6,
    "page_size": 10,
}


def small_company(
    client: redis.Redis,
    keys: KeySpace,
    company: str = "acme",
    erp: str = "xero",
    projects: tuple[str, ...] = ("p1",),
    **sandbox: object,
) -> SandboxData:
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


class ListPublisher:
    """Keeps what sync-now publishes instead of sending it to a broker."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, name: str, kwargs: dict[str, Any], task_id: str, queue: str) -> None:
        self.sent.append({"name": name, "kwargs": kwargs, "task_id": task_id, "queue": queue})

    def close(self) -> None:
        pass


class Sender:
    """Publishes sync tasks the way beat and ``sync-now`` do, on a Celery app of this test's own.

    (``worker.app`` reads its configuration once per process, so a test with its own key prefix
    builds its own app instead.)
    """

    def __init__(self, env: dict[str, str]) -> None:
        settings = Settings.model_validate(
            {k.removeprefix("ERP_SYNC_").lower(): v for k, v in env.items()}
        )
        self.publisher = CeleryPublisher(settings)

    def send(
        self,
        kind: SyncKind,
        company: str,
        task_id: str,
        project: str | None = None,
        slot_ts: float = 1_790_000_000.0,
        trigger: str = "schedule",
    ) -> str:
        self.publisher.send(
            TASK_NAMES[kind],
            task_kwargs(company, kind, project, slot_ts, trigger),
            task_id,
            queue_for(kind),
        )
        return task_id

    def close(self) -> None:
        self.publisher.close()
