"""The chaos scenarios' harness: a private Redis with processes on it; readers of what happened.

``Stack`` is one scenario's redis-server (AOF, ``appendfsync always``), key prefix and the
``celery beat`` / ``celery worker`` processes started on them (all stopped, and Redis killed, on
exit). The readers take a client and return plain values: the lease holder, beat's counters, the
queued messages, the run records, the workers' finished-run log lines, the drift against the ERP.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from config.keys import KeySpace
from config.models import RunRecord, SyncKind
from erp_sync.beat.engine import pid_of
from erp_sync.beat.lease import holder_node
from erp_sync.connectors.sandbox import SandboxErp
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database
from erp_sync.infra.slots import task_id
from erp_sync.runs.syncs import reconcile
from erp_sync.schedule.cadence import cadences, slot_after
from tests.support import procs
from tests.support.erp import small_company
from tests.support.redisproc import RedisServer

TINY = {
    "vendors": 5,
    "cost_codes": 2,
    "extra_jobs": 0,
    "project_cost_codes": 1,
    "costs_per_job": 2,
    "invoices_per_job": 2,
    "page_size": 1000,
}
FAST_LIMITS = {
    "ERP_SYNC_TASK_SOFT_TIME_LIMIT": "4",
    "ERP_SYNC_TASK_TIME_LIMIT": "5",
    "ERP_SYNC_VISIBILITY_TIMEOUT": "6",
}
RECEIVED = re.compile(r"Task [\w.]+\[(\S+)\] received")
FINISHED = re.compile(r"finished company=\S+ .*outcome=(\w+) .*task_id=(\S+)")


@dataclass
class Report:
    """What one scenario injected and found; ``problems`` are broken promises (must be empty)."""

    scenario: str
    injected: str
    times: int
    figures: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def print(self) -> None:
        verdict = "OK" if not self.problems else "FAILED: " + "; ".join(self.problems)
        print(
            f"\n== {self.scenario}: {self.injected} x{self.times} ({self.seconds:.0f} s) "
            f"-> {verdict}"
        )
        for name, value in self.figures.items():
            print(f"   {name}: {value}")


class Stack:
    """A private redis-server, a fresh key prefix and the processes started on them."""

    def __init__(self, workdir: Path, **env: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.server = RedisServer(workdir / "redis").start()
        self.keys = KeySpace(f"chaos{uuid.uuid4().hex[:6]}")
        self.db = Database(f"sqlite:///{workdir / 'erp_sync.db'}")  # its own, migrated
        self.db.upgrade()
        self.env = {
            "ERP_SYNC_REDIS_URL": self.server.url,
            "ERP_SYNC_KEY_PREFIX": self.keys.prefix,
            "ERP_SYNC_BEAT_LEASE_SECONDS": "2",
            "ERP_SYNC_DATABASE_URL": self.db.url,
            **env,
        }
        self.procs: list[procs.Proc] = []
        self._n = 0

    @property
    def client(self) -> redis.Redis:
        return self.server.client(socket_timeout=5)

    def beat(self) -> procs.Proc:
        self._n += 1
        proc = procs.beat(f"beat{self._n}", self.env, self.dir)
        self.procs.append(proc)
        return proc

    def worker(self, pool: str = "threads", concurrency: int = 4) -> procs.Proc:
        self._n += 1
        proc = procs.worker(
            f"worker{self._n}", self.env, self.dir, pool=pool, concurrency=concurrency
        )
        self.procs.append(proc)
        return proc

    def beats(self) -> list[procs.Proc]:
        return [p for p in self.procs if p.name.startswith("beat") and p.alive()]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            procs.stop_all(self.procs, timeout=10)
        self.server.close_clients()
        self.server.kill()


@contextlib.contextmanager
def stack(workdir: Path, **env: str) -> Iterator[Stack]:
    s = Stack(workdir, **env)
    try:
        yield s
    finally:
        s.close()


# --- reading what happened --------------------------------------------------------------------
def leader(client: redis.Redis, keys: KeySpace) -> tuple[str, int] | None:
    """(node, pid) of the lease holder, if any."""
    node = holder_node(client.get(keys.beat_leader))
    return None if node is None else (node, pid_of(node))


def leader_changed(client: redis.Redis, keys: KeySpace, old: str) -> bool:
    """Another node than ``old`` holds the lease."""
    held = leader(client, keys)
    return held is not None and held[0] != old


def stat(client: redis.Redis, keys: KeySpace, name: str) -> int:
    return int(client.hget(keys.beat_stats, name) or 0)


def stat_above(client: redis.Redis, keys: KeySpace, name: str, floor: int) -> bool:
    return stat(client, keys, name) > floor


def queued(client: redis.Redis, keys: KeySpace) -> list[tuple[str, str]]:
    """(task id, origin) of every message waiting in the queues."""
    out = []
    for q in ("company", "project"):
        for raw in client.lrange(keys.queue(q), 0, -1):
            headers = json.loads(raw)["headers"]
            out.append((str(headers["id"]), str(headers["origin"])))
    return out


def records(client: redis.Redis, keys: KeySpace, companies: list[str]) -> dict[str, RunRecord]:
    """Every run record (by task id) of these companies."""
    out: dict[str, RunRecord] = {}
    for company in companies:
        for tid, raw in client.hgetall(keys.runs(company)).items():
            out[str(tid)] = RunRecord.model_validate_json(raw)
    return out


def executions(logs: list[procs.Proc]) -> Counter[str]:
    """How many times each task id was run to a final outcome, from the workers' log lines."""
    seen: Counter[str] = Counter()
    for proc in logs:
        for outcome, tid in FINISHED.findall(proc.output()):
            if outcome != "running":
                seen[tid] += 1
    return seen


def drift(
    client: redis.Redis, keys: KeySpace, db: Database, company: str, project_ids: list[str]
) -> tuple[int, int]:
    """(records differing between ERP and Procore side, records only on the Procore side)."""
    erp = SandboxErp(client, keys, company)
    differ = extra = 0
    targets = [(k, None) for k in (SyncKind.VENDORS, SyncKind.JOBS)] + [
        (k, p) for p in project_ids for k in (SyncKind.JOB_COSTS, SyncKind.PAYMENTS)
    ]
    for kind, project in targets:
        for d in reconcile(db, company, kind, project, erp).values():
            differ += len(d.missing) + len(d.different)
            extra += len(d.extra)
    return differ, extra


def wait(check: Callable[[], object], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until ``check`` was truthy, or None after ``timeout`` (never raises)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(redis.RedisError):
            if check():
                return time.monotonic() - started
        time.sleep(interval)
    return None


def fleet(
    s: Stack, n: int, projects: int = 1, payments: str = "hourly", latency_ms: float = 0.0
) -> list[str]:
    client = s.client
    names = [f"c{i}" for i in range(n)]
    for name in names:
        small_company(
            client,
            s.keys,
            name,
            "xero",
            tuple(f"p{j}" for j in range(projects)),
            latency_ms=latency_ms,
            **TINY,
        )
        SettingsStore(client, s.keys).update_settings(
            name, "alice", {"payments_for_synced_invoices": payments}
        )
    return names


def slots_due(
    client: redis.Redis,
    keys: KeySpace,
    companies: list[str],
    start: float,
    end: float,
    seconds_per_hour: float,
) -> set[str]:
    """Task ids of every slot in (start, end], computed from the stored schedules."""
    store = SettingsStore(client, keys)
    due: set[str] = set()
    for company in companies:
        record, stored = store.get_company(company), store.sync_settings(company)
        projects = [p.id for p in store.list_projects(company)]
        for kind, cadence in cadences(stored.settings, record.timezone, seconds_per_hour).items():
            t = slot_after(cadence, company, kind, start)
            while t <= end:
                for project in projects if kind.project_level else [None]:
                    due.add(task_id(company, kind, project, t))
                t = slot_after(cadence, company, kind, t)
    return due


def drain(s: Stack, companies: list[str], timeout: float) -> float | None:
    """Wait until the queues are empty and no run is left ``running``."""

    def done() -> bool:
        client = s.client
        if client.llen(s.keys.queue("company")) or client.llen(s.keys.queue("project")):
            return False
        return all(r.status != "running" for r in records(client, s.keys, companies).values())

    return wait(done, timeout, 0.3)


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


def in_hand(worker: procs.Proc) -> set[str]:
    """Task ids this worker received and has not finished (from its log)."""
    out = worker.output()
    return set(RECEIVED.findall(out)) - {tid for _, tid in FINISHED.findall(out)}
