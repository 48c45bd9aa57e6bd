"""QuickBooks Online benchmark: a first and an incremental sync over HTTP against the fake server.

Run on purpose (not part of the tests), from the repo root:

    .venv/bin/python -m bench.qbo [--runs 3] [--latency-ms 50] [--scale 1.0] [--json]

Driven like production: real ``celery -A worker worker`` processes (a company worker and a
project worker, threads pool) on a private ``redis-server``, writing into an SQLite file
migrated with ``Database(url).upgrade()``; tasks are sent with the app (``tests.support.erp
.Sender``) as beat sends them, and the run history in the database says when each finished.
The ERP is the fake QuickBooks Online (``tests.support.fake_qbo``), a real HTTP process with
``latency_ms`` added to every API request, enforcing Intuit's 500 requests a minute and 10 in
flight per realm (answering 429 beyond them); the connector keeps its defaults (a bucket of 8/s,
burst 10, 10 requests in flight, 8 syncs of the company at once: ``DEFAULT_LIMITS``).

1. First sync of one company: 10k vendors, 1k projects and 100k job-cost lines (``SHAPE``), its
   vendors and jobs syncs and a job-costs and a payments sync of every project, all sent at
   once. Figures: wall time (first send to last finish), records written, records/s, requests
   the fake counted, 429s, the peak of requests in flight, and the floor: the fewest requests
   the data needs (every listing pages by 1,000 and ends at its first short page, so a listing
   of ``n`` takes ``n // 1000 + 1`` requests: vendors, customers (projects and their parents),
   and Bill, Purchase, VendorCredit and BillPayment for the mirror) over 500 a minute.
2. Incremental sync with 1 % changed (1 % of vendors and of Bills, through the admin API): the
   same 2,002 syncs again; requests made against the minimum (one CDC request for vendors, one
   for customers, one for the four transaction entities).

Each run starts a fresh fake, database and key prefix. Medians of ``--runs`` runs with the
spread (min-max); the load average is noted. Results: ``bench/results/qbo.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT
from config.keys import KeySpace
from config.models import AuditEntry, Erp, RunRecord, SyncKind
from erp_sync.connectors.qbo.connector import FRESH
from erp_sync.control.connections import Connection, ConnectionStore, Secrets
from erp_sync.control.vault import Vault, new_key
from erp_sync.db import Database, RunLog
from tests.support import procs
from tests.support.erp import Sender
from tests.support.fake_qbo.client import FakeQbo, Seed
from tests.support.redisproc import RedisServer

PAGE = 1000
PER_MINUTE = 500
BUCKET_RATE, BUCKET_BURST = (
    8.0,
    10.0,
)  # the connector's default bucket (erp_sync.throttle.ratelimit)
COMPANY, REALM = "qbo-bench", "9130350000000001"
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
# 1,000 projects x 100 lines: 40 Bills of 2 lines, 8 Purchases of 2 lines and 4 VendorCredits of
# 1 line per project (the fake's default two lines a bill), and 20 BillPayments per project.
SHAPE = Seed(
    vendors=10_000,
    projects=1_000,
    bills_per_project=40,
    lines_per_bill=2,
    purchases_per_project=8,
    vendor_credits_per_project=4,
    payments_per_project=20,
)
MIRRORED = ("Bill", "Purchase", "VendorCredit", "BillPayment")


def scaled(seed: Seed, scale: float) -> Seed:
    """A smaller (or larger) company of the same shape, for a quick look."""
    return replace(
        seed,
        vendors=max(1, round(seed.vendors * scale)),
        projects=max(1, round(seed.projects * scale)),
    )


def listing_requests(count: int) -> int:
    """Requests a paged listing of ``count`` rows needs: full pages, then the first short one."""
    return count // PAGE + 1


def floor_requests(entities: dict[str, int]) -> dict[str, int]:
    """The fewest requests a first sync of these entity counts needs, per listing."""
    return {
        name: listing_requests(entities.get(name, 0)) for name in ("Vendor", "Customer", *MIRRORED)
    }


def floor_seconds(requests: int) -> float:
    """Intuit's floor: ``requests`` at 500 a minute."""
    return requests * 60.0 / PER_MINUTE


def bucket_seconds(requests: int) -> float:
    """The connector's own floor: a burst of 10, then 8 a second."""
    return max(0.0, requests - BUCKET_BURST) / BUCKET_RATE


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass(frozen=True)
class Phase:
    """One wave of syncs (first or incremental) as measured."""

    wall_s: float
    syncs: int
    failed: int
    records_written: int
    records_unchanged: int
    records_per_s: float
    syncs_per_s: float
    erp_read_s: float
    requests: int
    queries: int
    cdc: int
    minimum_requests: int
    floor_s: float
    bucket_floor_s: float
    ratio_requests: float
    ratio_wall_to_floor: float
    ratio_erp_read_to_floor: float
    throttled_429: int
    max_in_flight: int
    max_requests_per_minute: int
    deferrals: int
    token_refreshes: int
    load: str


class Run:
    """One fresh fake, database, key prefix and pair of workers."""

    def __init__(self, workdir: Path, server: RedisServer, seed: Seed, latency_ms: float) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server, self.seed, self.latency_ms = server, seed, latency_ms
        self.client: redis.Redis = server.client()
        self.keys = KeySpace(f"qbo{uuid.uuid4().hex[:6]}")
        self.db_url = f"sqlite:///{(workdir / 'erp_sync.db').resolve()}"
        Database(self.db_url).upgrade()
        self.db = Database(self.db_url)
        self.secret_key = new_key()
        self.env = {
            "ERP_SYNC_REDIS_URL": server.url,
            "ERP_SYNC_KEY_PREFIX": self.keys.prefix,
            "ERP_SYNC_DATABASE_URL": self.db_url,
            "ERP_SYNC_SECRET_KEY": self.secret_key,
        }
        self.qbo = FakeQbo.start(workdir / "fake")
        started = time.monotonic()
        created = self.qbo.create_realm(REALM, CLIENT_ID, CLIENT_SECRET, "rt-bench-0", seed=seed)
        self.seed_s = time.monotonic() - started
        self.entities: dict[str, int] = created["entities"]
        self.workers: list[procs.Proc] = []

    def setup_company(self) -> list[str]:
        """The company on quickbooks_online, connected to the fake, with every project linked
        (a project's id is its QBO Customer Id: the seed makes the parents first)."""
        from erp_sync.control.store import SettingsStore

        store = SettingsStore(self.client, self.keys)
        store.add_company(COMPANY, Erp.QUICKBOOKS_ONLINE.value, admin="bench")
        parents = -(-self.seed.projects // 5)
        projects = [str(parents + 1 + n) for n in range(self.seed.projects)]
        pipe = self.client.pipeline(transaction=False)
        now = datetime.now(UTC)
        for project in projects:
            pipe.hset(
                self.keys.projects(COMPANY),
                project,
                json.dumps(
                    {
                        "company": COMPANY,
                        "id": project,
                        "name": project,
                        "created_at": now.isoformat(),
                    }
                ),
            )
        pipe.execute()
        connections = ConnectionStore(self.client, self.keys, Vault([self.secret_key]))
        connections.save(
            Connection(
                company=COMPANY,
                erp=Erp.QUICKBOOKS_ONLINE,
                realm_id=REALM,
                client_id=CLIENT_ID,
                base_url=self.qbo.url,
                token_url=self.qbo.token_url,
                connected_by="bench",
                connected_at=now,
            ),
            Secrets(client_secret=CLIENT_SECRET, refresh_token="rt-bench-0"),
            AuditEntry(at=now, actor="bench", action="connection.connect", company=COMPANY),
        )
        return projects

    def start_workers(self) -> None:
        self.workers = [
            procs.worker(
                "company", self.env, self.dir, queues="company", pool="threads", concurrency=4
            ),
            procs.worker(
                "project", self.env, self.dir, queues="project", pool="threads", concurrency=8
            ),
        ]
        for worker in self.workers:
            worker.wait_for(" ready.", 60)

    def wave(self, name: str, projects: list[str], minimum: int) -> Phase:
        """Send the vendors and jobs syncs and every project's two syncs; wait for all."""
        self.qbo.reset_stats(REALM)
        sender = Sender(self.env)
        ids: list[str] = []
        load_before = load()
        deferred_before = self.deferrals()
        started = time.monotonic()
        try:
            ids.append(sender.send(SyncKind.VENDORS, COMPANY, f"{name}-vendors"))
            ids.append(sender.send(SyncKind.JOBS, COMPANY, f"{name}-jobs"))
            for project in projects:
                ids.append(
                    sender.send(SyncKind.JOB_COSTS, COMPANY, f"{name}-jc-{project}", project)
                )
                ids.append(
                    sender.send(SyncKind.PAYMENTS, COMPANY, f"{name}-pay-{project}", project)
                )
            markers = [self.keys.executed(i) for i in ids]
            procs.wait_until(
                lambda: self.client.exists(*markers) == len(ids),
                900,
                f"{name}: the syncs did not finish; see {self.dir}/*.log",
                interval=0.25,
            )
        finally:
            sender.close()
        wall = time.monotonic() - started
        wanted = set(ids)
        runs = [r for r in RunLog(self.db).recent(COMPANY, 10 * len(ids)) if r.task_id in wanted]
        stats = self.qbo.stats(REALM)
        return self._phase(
            runs,
            wall,
            stats,
            minimum,
            f"{load_before} -> {load()}",
            self.deferrals() - deferred_before,
        )

    def deferrals(self) -> int:
        """Deferrals the workers logged so far (a rate-limit wait or the company's cap)."""
        return sum(w.output().count(f"deferred company={COMPANY} ") for w in self.workers)

    def _phase(
        self,
        runs: list[RunRecord],
        wall: float,
        stats: dict[str, Any],
        minimum: int,
        load_seen: str,
        deferrals: int,
    ) -> Phase:
        written = sum(r.counts.get(k, 0) for r in runs for k in ("created", "updated", "deleted"))
        unchanged = sum(r.counts.get("unchanged", 0) for r in runs)
        requests = int(stats["requests"])
        floor = floor_seconds(minimum)
        # The ERP part: until the vendors and jobs syncs and the first project sync (which
        # refreshes the mirror: every transaction read) have finished.
        start = min(r.started_at for r in runs)
        company = [r.finished_at for r in runs if r.kind in ("vendors", "jobs")]
        project = [r.finished_at for r in runs if r.kind in ("job_costs", "payments")]
        ends = [t for t in [*company, min(t for t in project if t)] if t is not None]
        erp_read = (max(ends) - start).total_seconds()
        return Phase(
            wall_s=round(wall, 2),
            syncs=len(runs),
            failed=sum(r.status != "succeeded" for r in runs),
            records_written=written,
            records_unchanged=unchanged,
            records_per_s=round(written / wall, 1),
            syncs_per_s=round(len(runs) / wall, 1),
            erp_read_s=round(erp_read, 2),
            requests=requests,
            queries=int(stats["queries"]),
            cdc=int(stats["cdc"]),
            minimum_requests=minimum,
            floor_s=round(floor, 2),
            bucket_floor_s=round(bucket_seconds(minimum), 2),
            ratio_requests=round(requests / minimum, 2),
            ratio_wall_to_floor=round(wall / floor, 2) if floor else 0.0,
            ratio_erp_read_to_floor=round(erp_read / floor, 2) if floor else 0.0,
            throttled_429=int(stats["throttled"]),
            max_in_flight=int(stats["max_concurrency"]),
            max_requests_per_minute=int(stats["max_requests_per_minute"]),
            deferrals=deferrals,
            token_refreshes=int(stats["refreshes"]),
            load=load_seen,
        )

    def change_one_percent(self) -> dict[str, int]:
        """1 % of vendors (a new city: the vendor record changes) and of Bills (a new
        DocNumber: every line of the Bill changes), through the admin API."""
        vendors = [str(i) for i in range(1, self.entities["Vendor"] + 1, 100)]
        bills = [str(i) for i in range(1, self.entities["Bill"] + 1, 100)]
        self.qbo.change(REALM, "Vendor", vendors, {"BillAddr": {"City": "Changed City"}})
        self.qbo.change(REALM, "Bill", bills, {"DocNumber": "INV-CHANGED"})
        return {"vendors": len(vendors), "bills": len(bills)}

    def close(self) -> None:
        procs.stop_all(self.workers)
        self.qbo.stop()


def one_run(workdir: Path, server: RedisServer, seed: Seed, latency_ms: float) -> dict[str, Any]:
    run = Run(workdir, server, seed, latency_ms)
    try:
        projects = run.setup_company()
        run.start_workers()
        run.qbo.switches(REALM, latency_ms=latency_ms)
        per_listing = floor_requests(run.entities)
        first = run.wave("first", projects, sum(per_listing.values()))
        changed = run.change_one_percent()
        # A project sync reuses a mirror refreshed less than FRESH seconds ago (by design: 2,000
        # project syncs share one refresh); the next scheduled round comes later than that.
        time.sleep(FRESH + 1)
        # The incremental minimum: one CDC request each for Vendor, Customer and the four
        # transaction entities together (every change fits in one CDC response of 1,000).
        again = run.wave("incremental", projects, 3)
        return {
            "seed_s": round(run.seed_s, 1),
            "entities": run.entities,
            "floor_requests": per_listing,
            "first": asdict(first),
            "changed": changed,
            "incremental": asdict(again),
        }
    finally:
        run.close()


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Median (min-max) of every numeric figure of each phase."""
    out: dict[str, dict[str, str]] = {}
    for phase in ("first", "incremental"):
        rows = [r[phase] for r in runs]
        out[phase] = {}
        for key, value in rows[0].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values = [row[key] for row in rows]
                med = statistics.median(values)
                out[phase][key] = (
                    f"{med:g}" if len(values) == 1 else f"{med:g} ({min(values):g}-{max(values):g})"
                )
            else:
                out[phase][key] = " | ".join(str(row[key]) for row in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="vendors and projects times this (1.0: 10k vendors, 1k projects)",
    )
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "qbo.json")
    args = parser.parse_args()
    seed = scaled(SHAPE, args.scale)
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-qbo-") as tmp:
        server = RedisServer(Path(tmp) / "redis", extra=["--appendonly", "no"]).start()
        try:
            for n in range(args.runs):
                result = one_run(Path(tmp) / f"run{n}", server, seed, args.latency_ms)
                results.append(result)
                print(
                    f"run {n + 1}/{args.runs}: first {result['first']['wall_s']} s, "
                    f"{result['first']['requests']} requests (minimum "
                    f"{result['first']['minimum_requests']}); incremental "
                    f"{result['incremental']['wall_s']} s, "
                    f"{result['incremental']['requests']} requests",
                    flush=True,
                )
        finally:
            server.kill()
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "celery worker processes (company: threads -c 4; project: threads -c 8)",
        "latency_ms": args.latency_ms,
        "seed": asdict(seed),
        "runs": len(results),
        "cpus": os.cpu_count(),
        "total_s": round(time.monotonic() - began, 1),
        "summary": summarise(results),
        "each": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for phase, figures in report["summary"].items():
        print(f"\n{phase} (median (min-max) of {len(results)}; {report['mode']}):")
        for key, value in figures.items():
            print(f"  {key:26} {value}")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
