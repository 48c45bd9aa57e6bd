"""Worker benchmark: sync throughput against a 50 ms ERP, and rate-limit accuracy.

Run on purpose (not part of the tests), from the repo root:

    .venv/bin/python -m bench.workers [--latency-ms 50] [--seconds 6] [--json]

1. Throughput. Each sync is one vendors refresh that costs exactly one ERP call of ``latency``,
   so one worker process can at best finish ``concurrency / latency`` syncs per second. The
   benchmark queues about ``seconds`` worth of syncs spread over enough companies that no two
   run at once for the same company (the run lock would skip them), then measures from the first
   start to the last finish in the run history. Reported as a ratio of that ideal (target >= 0.9),
   for the prefork pool and the threads pool.
2. Rate limit. One company with a limit of ``rate`` calls/s (burst 1) and far more demand (many
   projects' payments syncs on a 16-thread worker). The achieved call rate, from the sandbox's own
   call log, as a ratio of the limit (target >= 0.9, never above 1.0), plus the most calls seen in
   any one-second window.

Everything runs against a private redis-server on a free port, under a fresh key prefix.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import redis

from config.keys import KeySpace
from config.models import Erp, SyncKind
from erp_sync.connectors.sandbox_data import SandboxData
from erp_sync.control.store import SettingsStore
from erp_sync.runs.records import RunRecords
from erp_sync.throttle.ratelimit import set_limit
from tests.support import procs
from tests.support.erp import Sender
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs

TINY = {
    "vendors": 5,
    "cost_codes": 2,
    "extra_jobs": 0,
    "project_cost_codes": 1,
    "costs_per_job": 2,
    "invoices_per_job": 2,
    "page_size": 1000,
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (a prefork pool), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


PREFETCH_2 = ["--prefetch-multiplier", "2"]


class Bench:
    def __init__(self, workdir: Path, latency_ms: float) -> None:
        self.dir = workdir
        self.server = RedisServer(workdir / "redis", extra=["--appendonly", "no"]).start()
        self.client: redis.Redis = self.server.client()
        self.latency_ms = latency_ms

    def fresh(self) -> tuple[KeySpace, dict[str, str]]:
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        env = {"ERP_SYNC_REDIS_URL": self.server.url, "ERP_SYNC_KEY_PREFIX": prefix}
        return KeySpace(prefix), env

    def companies(
        self,
        keys: KeySpace,
        count: int,
        projects: int = 0,
        erp: Erp = Erp.QUICKBOOKS_ONLINE,
        name: str = "c",
        **sandbox: int,
    ) -> list[str]:
        store, data = SettingsStore(self.client, keys), SandboxData(self.client, keys)
        ids = [f"{name}{n:04d}" for n in range(count)]
        for company in ids:
            store.add_company(company, erp.value)
            for p in range(projects):
                store.add_project(company, f"p{p:03d}")
            data.configure(company, latency_ms=self.latency_ms, **{**TINY, **sandbox})
            data.ensure_seeded(company)
        return ids

    def throughput(
        self,
        pool: str,
        concurrency: int,
        seconds: float,
        per_sync: int = 1,
        extra: list[str] | None = None,
    ) -> dict[str, Any]:
        """``per_sync`` ERP calls per sync: 1 (a refresh with nothing new, companies reused) or
        more (a first full read of ``per_sync - 1`` pages of 10 vendors, one company per sync)."""
        keys, env = self.fresh()
        set_limit(self.client, keys, Erp.QUICKBOOKS_ONLINE.value, 10_000, 10_000)
        ideal = concurrency / (per_sync * self.latency_ms / 1000)
        total = int(ideal * seconds)
        if per_sync == 1:
            companies = self.companies(keys, max(4 * concurrency, 32))
        else:
            companies = self.companies(keys, total, vendors=10 * (per_sync - 1), page_size=10)
        worker = procs.worker(
            f"{pool}{concurrency}",
            env,
            self.dir,
            queues="company",
            pool=pool,
            concurrency=concurrency,
            extra=["-l", "WARNING", *(extra or [])],
        )
        sender = Sender(env)
        try:
            self._warm_up(worker, keys, sender, SyncKind.VENDORS)
            cpu0 = cpu_seconds(worker.pid)
            ids = [
                sender.send(SyncKind.VENDORS, companies[n % len(companies)], f"b{n}")
                for n in range(total)
            ]
            self._wait(keys, ids)
            cpu = cpu_seconds(worker.pid) - cpu0
            history = RunRecords(self.client, keys)
            wanted = set(ids)
            records = [
                r for c in companies for r in recent_runs(history, c, 10_000) if r.task_id in wanted
            ]
        finally:
            sender.close()
            worker.stop()
        assert len(records) == total and all(r.status == "succeeded" for r in records)
        calls = sum(int(self.client.llen(keys.erp_calls(c))) for c in companies)
        start = min(r.started_at for r in records)
        end = max(r.finished_at for r in records if r.finished_at)
        rate = total / (end - start).total_seconds()
        flags = f" {' '.join(extra)}" if extra else ""
        return {
            "scenario": f"throughput {pool} -c {concurrency}{flags}, {per_sync} call(s)/sync",
            "syncs": total,
            "erp_calls": calls,
            "mean_run_ms": round(sum(r.duration_ms or 0 for r in records) / total, 1),
            "worker_cpu_ms_per_sync": round(cpu * 1000 / total, 2),
            "syncs_per_s": round(rate, 1),
            "ideal": round(ideal, 1),
            "ratio": round(rate / ideal, 3),
        }

    def _warm_up(self, worker: procs.Proc, keys: KeySpace, sender: Sender, kind: SyncKind) -> None:
        """One sync on a company of its own, so the pool is up before the clock runs."""
        (company,) = self.companies(keys, 1, projects=1, erp=Erp.XERO, name="warm")
        set_limit(self.client, keys, Erp.XERO.value, 10_000, 10_000)
        sender.send(kind, company, "warmup", "p000" if kind.project_level else None)
        procs.wait_until(
            lambda: self.client.exists(keys.executed("warmup")),
            60,
            "warm-up sync never finished; see the worker log",
        )

    def _wait(self, keys: KeySpace, ids: list[str]) -> None:
        markers = [keys.executed(i) for i in ids]
        procs.wait_until(
            lambda: self.client.exists(*markers) == len(ids),
            300,
            "benchmark syncs did not finish",
            interval=0.25,
        )

    def rate_limit(self, rate: float, seconds: float) -> dict[str, Any]:
        keys, env = self.fresh()
        demand = int(rate * seconds)
        (company,) = self.companies(keys, 1, projects=demand)
        set_limit(self.client, keys, Erp.QUICKBOOKS_ONLINE.value, rate, 1)
        worker = procs.worker(
            "ratelimit",
            env,
            self.dir,
            queues="project",
            pool="threads",
            concurrency=16,
            extra=["-l", "WARNING"],
        )
        sender = Sender(env)
        try:
            self._warm_up(worker, keys, sender, SyncKind.PAYMENTS)
            ids = [
                sender.send(SyncKind.PAYMENTS, company, f"r{p}", f"p{p:03d}") for p in range(demand)
            ]
            self._wait(keys, ids)
            records = recent_runs(RunRecords(self.client, keys), company, demand + 10)
        finally:
            sender.close()
            worker.stop()
        assert len(records) == demand and all(r.status == "succeeded" for r in records)
        calls = sorted(float(t) for t in self.client.lrange(keys.erp_calls(company), 0, -1))
        achieved = (len(calls) - 1) / (calls[-1] - calls[0])
        window = max(bisect.bisect_right(calls, t + 1.0) - i for i, t in enumerate(calls))
        return {
            "scenario": f"rate limit {rate:g}/s, burst 1",
            "erp_calls": len(calls),
            "achieved_per_s": round(achieved, 3),
            "limit": rate,
            "ratio": round(achieved / rate, 4),
            "max_calls_in_1s": window,
            "allowed_in_1s": int(1 + rate),
        }

    def close(self) -> None:
        self.server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.latency_ms)
        try:
            results = [
                bench.throughput("prefork", 4, args.seconds),
                bench.throughput("threads", 8, args.seconds),
                bench.throughput("threads", 16, args.seconds),
                bench.throughput("prefork", 4, args.seconds, extra=PREFETCH_2),
                bench.throughput("threads", 8, args.seconds, extra=PREFETCH_2),
                bench.throughput("prefork", 4, args.seconds, per_sync=4),
                bench.throughput("threads", 16, args.seconds, per_sync=4),
                bench.rate_limit(args.rate, args.seconds),
            ]
        finally:
            bench.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for row in results:
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
