"""Shared bench helpers: a private redis-server, fast seeding of companies, small statistics."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

import redis

from config.keys import KeySpace
from config.models import Company, Erp, StoredSettings, SyncSettings

ROOT = Path(__file__).resolve().parents[1]
ONLY_VENDORS = SyncSettings(
    sync_project_job_costs=False,
    refresh_erp_job_list=False,
    sync_payments_for_synced_invoices=False,
)
ONLY_JOB_COSTS = SyncSettings(
    refresh_erp_companies_list=False,
    refresh_erp_job_list=False,
    sync_payments_for_synced_invoices=False,
)


def seed(
    client: redis.Redis,
    keys: KeySpace,
    n: int,
    settings: SyncSettings,
    projects: int = 0,
    chunk: int = 2000,
) -> None:
    """Write ``n`` companies (records, settings, optional projects) the way the store does,
    pipelined: the bench measures beat, not 100k optimistic transactions."""
    now = datetime.now(UTC)
    for start in range(0, n, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + chunk)):
            cid = f"c{i}"
            pipe.set(
                keys.company(cid),
                Company(id=cid, name=cid, erp=Erp.XERO, created_at=now).model_dump_json(),
            )
            pipe.sadd(keys.companies, cid)
            pipe.set(
                keys.settings(cid),
                StoredSettings(
                    company=cid, version=1, settings=settings, updated_at=now, updated_by="bench"
                ).model_dump_json(),
            )
            if projects:
                pipe.hset(
                    keys.projects(cid),
                    mapping={
                        f"p{j}": json.dumps(
                            {
                                "company": cid,
                                "id": f"p{j}",
                                "name": f"p{j}",
                                "created_at": now.isoformat(),
                            }
                        )
                        for j in range(projects)
                    },
                )
        pipe.execute()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def key_bytes(client: redis.Redis, *names: str) -> int:
    return sum(int(client.memory_usage(k, samples=0) or 0) for k in names)
