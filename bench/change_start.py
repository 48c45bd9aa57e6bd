"""Change latency as users feel it: a schedule change -> the first task of the new cadence started
on a real worker. erp-sync's beat and RedBeat (defaults and tuned), all real processes.

    .venv/bin/python -m bench.change_start [--runs 3] [--samples 6] [--period 10]

One private redis-server, one SQLite run-history database migrated like ``erp-sync db upgrade``,
one real ``celery -A worker worker`` (company queue, threads -c 4, INFO) per side, and the side's
real beat. The hour is shrunk (``ERP_SYNC_SECONDS_PER_HOUR=period``), so "hourly" is every
``period`` seconds; the sandbox ERP answers at once. A start is the ``running`` record the worker
writes as it starts the task (its ``started_at``); every time here is this host's clock.

erp-sync: a company with every sync off gets its job-list sync switched on by ``update_settings``
(what ``erp-sync settings set`` does). Figures: write -> applied by beat (beat's announcement,
what ``settings set`` reports as ``applied_ms``); write -> first start of the new cadence; and
start - slot, the part that is not the schedule's own wait (a new cadence starts at its next slot,
which falls anywhere in the next period: a stable per-company offset).
RedBeat has no apply step: a saved entry is read at its next poll. Two entries per sample: one
due now (its last run a period ago): save -> started on the worker, which is RedBeat's "change
latency" including its poll wait; and one with the new cadence (last run = now, so first due one
period later): save -> first start, and start - due.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.common import ROOT, median, pct
from config.keys import KeySpace
from config.members import due_member
from config.models import Erp, SyncKind, SyncSettings
from erp_sync.connectors.sandbox_data import SandboxData
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database
from erp_sync.infra.slots import TASK_NAMES, slot_iso
from erp_sync.runs.records import RunRecords
from erp_sync.schedule.applied import AppliedWaiter
from erp_sync.throttle.ratelimit import set_limit
from tests.support.procs import Proc, beat, wait_until, worker
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs

ALL_OFF = SyncSettings(
    sync_project_job_costs=False,
    refresh_erp_companies_list=False,
    refresh_erp_job_list=False,
    sync_payments_for_synced_invoices=False,
)
JOBS_ONLY = ALL_OFF.model_copy(update={"refresh_erp_job_list": True})
TINY = {
    "vendors": 2,
    "cost_codes": 1,
    "extra_jobs": 0,
    "project_cost_codes": 1,
    "costs_per_job": 1,
    "invoices_per_job": 1,
    "page_size": 1000,
    "latency_ms": 0,
}
REDBEAT = {"tuned": (1.0, 3.0), "default": (5.0, None)}  # max-interval, lock timeout


class Side:
    """One side's private key prefix, companies and worker."""

    def __init__(
        self, server: RedisServer, logs: Path, db_url: str, name: str, period: float
    ) -> None:
        self.name, self.logs = name, logs
        self.keys = KeySpace(f"cs{name}")
        self.client: redis.Redis = server.client()
        self.env = {
            "ERP_SYNC_REDIS_URL": server.url,
            "ERP_SYNC_KEY_PREFIX": self.keys.prefix,
            "ERP_SYNC_DATABASE_URL": db_url,
            "ERP_SYNC_SECONDS_PER_HOUR": f"{period:g}",
        }
        self.store = SettingsStore(self.client, self.keys)
        self.history = RunRecords(self.client, self.keys)

    def companies(self, ids: list[str], settings: SyncSettings) -> None:
        """Companies added as ``erp-sync company add`` does, an admin, and ``settings``."""
        data = SandboxData(self.client, self.keys)
        for company in ids:
            self.store.add_company(company, Erp.XERO.value)
            self.store.grant(company, "admin", "admin")
            self.store.update_settings(company, "admin", lambda s: settings.model_dump())
            data.configure(company, **TINY)
            data.ensure_seeded(company)
        set_limit(self.client, self.keys, Erp.XERO.value, 10_000, 10_000)

    def worker(self) -> Proc:
        proc = worker(f"w-{self.name}", self.env, self.logs, queues="company", concurrency=4)
        proc.wait_for("ready.", 60)
        return proc

    def first_start(self, company: str, kind: str = "jobs") -> float | None:
        runs = [r for r in recent_runs(self.history, company, 20) if r.kind == kind]
        return min(r.started_at.timestamp() for r in runs) if runs else None

    def wait_starts(self, pending: dict[str, Any], timeout: float) -> dict[str, float]:
        """company -> first start (epoch seconds), polled until every one started."""
        got: dict[str, float] = {}
        deadline = time.time() + timeout
        while len(got) < len(pending) and time.time() < deadline:
            for company in pending:
                if company not in got and (start := self.first_start(company)) is not None:
                    got[company] = start
            time.sleep(0.02)
        missing = set(pending) - set(got)
        if missing:
            raise RuntimeError(f"{self.name}: no start for {sorted(missing)}; see {self.logs}")
        return got


def ours(
    server: RedisServer,
    logs: Path,
    db_url: str,
    runs: int,
    samples: int,
    period: float,
    rng: random.Random,
) -> list[dict[str, float]]:
    side = Side(server, logs, db_url, "ours", period)
    ids = [f"o{r}x{i}" for r in range(runs) for i in range(samples)]
    side.companies(ids, ALL_OFF)
    work = side.worker()
    proc = beat("beat-ours", side.env, logs)  # INFO, as the compose file runs it
    out = []
    try:
        wait_until(lambda: side.client.get(side.keys.beat_cursor) is not None, 60, "no rebuild")
        for r in range(runs):
            batch: dict[str, dict[str, float]] = {}
            for i in range(samples):
                company = f"o{r}x{i}"
                time.sleep(rng.uniform(0.2, 1.5))
                waiter = AppliedWaiter(side.client, side.keys, company)
                written = time.time()
                stored, _ = side.store.update_settings(
                    company, "admin", lambda s: {"refresh_erp_job_list": True}
                )
                ms = waiter.wait(stored.version, 10, time.monotonic())
                slot = side.client.zscore(side.keys.due, due_member(company, SyncKind.JOBS))
                batch[company] = {
                    "run": r,
                    "written": written,
                    "applied_ms": ms or float("inf"),
                    "due": float(slot or "nan"),
                }
            for company, start in side.wait_starts(batch, 3 * period + 30).items():
                row = batch[company]
                out.append(
                    {
                        **row,
                        "start_s": start - row["written"],
                        "late_ms": (start - row["due"]) * 1000,
                    }
                )
            for company in batch:  # switch it off again: one first start per company
                side.store.update_settings(
                    company, "admin", lambda s: {"refresh_erp_job_list": False}
                )
    finally:
        proc.stop()
        work.stop()
    return out


def redbeat(
    server: RedisServer,
    logs: Path,
    db_url: str,
    runs: int,
    samples: int,
    period: float,
    config: str,
    rng: random.Random,
) -> list[dict[str, float]]:
    from celery.schedules import schedule as every
    from redbeat.schedulers import RedBeatSchedulerEntry

    max_interval, lock_timeout = REDBEAT[config]
    side = Side(server, logs, db_url, f"rb{config}", period)
    ids = [f"{k}{r}x{i}" for k in "dn" for r in range(runs) for i in range(samples)]
    side.companies(ids, JOBS_ONLY)  # the worker runs a sync only if its settings switch it on
    prefix = f"{side.keys.prefix}:redbeat:"
    app = Celery("rbclient")
    app.conf.update(redbeat_redis_url=server.url, redbeat_key_prefix=prefix)
    # RedBeat in the deployed app: our worker app, RedBeat's scheduler and its lock settings
    module = f"rbcs_{config}"
    lines = [
        "from worker import app",
        f"app.conf.update(redbeat_redis_url={server.url!r}, redbeat_key_prefix={prefix!r},"
        " beat_schedule={})",
    ]
    if lock_timeout is not None:
        lines.append(f"app.conf.redbeat_lock_timeout = {lock_timeout!r}")
    (logs / f"{module}.py").write_text("\n".join(lines) + "\n")
    work = side.worker()
    proc = Proc(
        f"beat-{config}",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            module,
            "beat",
            "-l",
            "INFO",
            "-S",
            "redbeat.RedBeatScheduler",
            "--max-interval",
            f"{max_interval:g}",
        ],
        {**side.env, "PYTHONPATH": f"{logs}{os.pathsep}{ROOT}"},
        logs,
    )
    out = []
    try:
        proc.wait_for("Acquired lock", 60)
        time.sleep(1)
        for r in range(runs):
            batch: dict[str, dict[str, float]] = {}
            entries = []
            for i in range(samples):
                for k in "dn":  # due now; new cadence (first due one period later)
                    company = f"{k}{r}x{i}"
                    time.sleep(rng.uniform(0.2, 1.5) / 2)
                    now = app.now()
                    last = now - timedelta(seconds=period + 1) if k == "d" else now
                    entry = RedBeatSchedulerEntry(
                        f"{company}-jobs",
                        TASK_NAMES[SyncKind.JOBS],
                        every(period, app=app),
                        kwargs={"company": company, "slot": slot_iso(time.time())},
                        options={"queue": "company"},
                        app=app,
                        last_run_at=last,
                    )
                    written = time.time()
                    entry.save()
                    entries.append(entry)
                    due = written if k == "d" else entry.due_at.timestamp()
                    batch[company] = {
                        "run": r,
                        "written": written,
                        "due": due,
                        "due_now": float(k == "d"),
                    }
            for company, start in side.wait_starts(batch, 3 * period + 30).items():
                row = batch[company]
                out.append(
                    {
                        **row,
                        "start_s": start - row["written"],
                        "late_ms": (start - row["due"]) * 1000,
                    }
                )
            for entry in entries:
                entry.delete()
    finally:
        proc.stop()
        work.stop()
    return out


def stats(values: list[float], runs: list[int]) -> dict[str, Any]:
    """Pooled median, p90, min-max, and the median of each run."""
    per_run = [
        median([v for v, r in zip(values, runs, strict=True) if r == k]) for k in sorted(set(runs))
    ]
    return {
        "n": len(values),
        "median": median(values),
        "p90": pct(values, 90),
        "min": min(values),
        "max": max(values),
        "run_medians": per_run,
    }


def report(name: str, rows: list[dict[str, float]]) -> dict[str, Any]:
    runs = [int(r["run"]) for r in rows]
    out = {
        "start_s": stats([r["start_s"] for r in rows], runs),
        "late_ms": stats([r["late_ms"] for r in rows], runs),
    }
    if rows and "applied_ms" in rows[0]:
        out["applied_ms"] = stats([r["applied_ms"] for r in rows], runs)
    print(name, json.dumps(out), "load", load(), flush=True)
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=6, help="changes per run")
    parser.add_argument("--period", type=float, default=10, help="seconds of a shrunk hour")
    parser.add_argument("--only", default="ours,tuned,default")
    args = parser.parse_args()
    rng = random.Random(11)
    results: dict[str, Any] = {"load": [load()], "period": args.period}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        db_url = f"sqlite:///{logs / 'runs.db'}"
        Database(db_url).upgrade()
        server = RedisServer(logs / "redis", extra=["--appendonly", "no"]).start()
        try:
            for side in args.only.split(","):
                if side == "ours":
                    rows = ours(server, logs, db_url, args.runs, args.samples, args.period, rng)
                    results["ours"] = {"rows": rows, **report("ours", rows)}
                else:
                    rows = redbeat(
                        server, logs, db_url, args.runs, args.samples, args.period, side, rng
                    )
                    for k, label in ((1.0, "due_now"), (0.0, "new_cadence")):
                        part = [r for r in rows if r["due_now"] == k]
                        results[f"redbeat_{side}_{label}"] = {
                            "rows": part,
                            **report(f"redbeat {side} {label}", part),
                        }
                results["load"].append(load())
        finally:
            server.stop()
            server.close_clients()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "change_start.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
