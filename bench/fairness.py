"""Fairness benchmark: does a slow neighbour delay a healthy company's syncs?

Run on purpose (not part of the tests), from the repo root:

    .venv/bin/python -m bench.fairness [--runs 3] [--rate 5] [--seconds 12] [--before-seconds 4]
                                       [--json] [--only alone,neighbour,before] [--keep DIR]

What it measures: the *due-to-start latency* of a healthy company's payments syncs, i.e. a run's
``started_at`` in the run history minus the moment its task was published (``client.time()``
read just before the publish; both on Redis time), with and without a slow neighbour.

How: one private ``redis-server`` (AOF off); each run under a fresh key prefix with a fresh, real
worker process configured as ``scripts/devstack.py`` deploys the project worker
(``celery -A worker worker -Q project -P threads -c 8 -l INFO -E``), warmed up by one sync of a
company of its own before the clock runs. Companies come from ``tests/support/erp.py``
(``small_company``: a fast sandbox ERP, no practical rate limit for the family); syncs are
published with its ``Sender`` the way beat publishes them. Scenarios:

- ``alone``: the healthy company (10 projects) gets payments syncs published at a steady
  ``--rate`` (5/s) for ``--seconds`` (12 s), round-robin over its projects.
- ``neighbour``: the same, but first a slow company (50 projects, its ERP at 1 call/s:
  ``CompanyLimit(rate=1, burst=1)``, default concurrency cap 2) has all 50 payments syncs published
  at once (all due now), ahead of the healthy ones in the queue. The run then waits for the slow
  company to complete and checks it: 50 ``succeeded`` records, exactly one ``finished`` log line
  per task id, exactly 50 sandbox ERP calls (each sync is one page, so 50 calls means none lost and
  none run twice) and the spacing of those calls (arrival times logged by the sandbox on Redis
  time) never under 1 s.
- ``before`` (reference: the worker before deferral and the concurrency cap existed):
  ``neighbour`` with ``ERP_SYNC_DEFER_AFTER_SECONDS=1000`` (every rate-limit wait is slept in the
  worker slot) and the slow company's concurrency cap lifted to 50, so nothing is ever deferred
  (the run checks that no "deferred" line appears). The 8 slots fill with slow syncs sleeping for
  their tokens and the healthy syncs wait until the slow backlog has been taken off the queue
  (about 43 s at 1 call/s), so the healthy stream is shorter: ``--before-seconds`` (4 s, 20
  syncs at 5/s) instead of ``--seconds``; a run takes about 50 s whatever the stream. Only the
  healthy company is measured; the worker is stopped without waiting for the slow company.
- ``before-capped`` (opt-in, ``--only before-capped``): ``before`` with the slow company's default
  cap of 2, i.e. only the rate-limit waits slept. Not the old behaviour: a sync over the cap is
  deferred whatever ``DEFER_AFTER`` says, so 48 of the 50 are deferred and return in turn. (The
  first log of this bench, commit 29ec976, reported this variant as ``before``.)

The scenarios are interleaved (alone, neighbour, before; ``--runs`` rounds), so drifting machine
load hits them alike. Each figure is the median of the runs with the spread (min-max); the
headline is the ratio of the healthy p99 with a neighbour to the healthy p99 alone (target
<= 1.5). Percentiles are nearest-rank over one run's syncs (60 at 5/s for 12 s: the p99 is the
second-largest). Also shown: the first healthy sync's latency (published right behind the slow
backlog) and the p99 over the syncs published after the stream's first second, which separate
the backlog's head-of-line cost from the steady state.

Head of line (``neighbour`` runs): the worker receives messages in queue order, so before it even
sees the first healthy message it must receive and run (defer) the slow syncs published ahead of
it. From the worker log and the worker's CPU (sampled every 20 ms from /proc): the *intake*, from
the first slow message received to the first healthy one received, the slow messages received and
deferrals made in it, its worker CPU, and so the wall and CPU time per deferral; and the first
healthy sync's latency split into publish -> received and received -> started.

The machine's load average is recorded before each run (other work on the machine shows there).
A full run takes about 6 minutes. Prints markdown tables, with the command and the load, ready to
paste into bench/README.md, and writes raw numbers to ``bench/results/fairness.json`` (git
ignored); exits 1 if the product misbehaved
(a sync lost, run twice or failed, the ERP limit beaten, a worker crash, a deferral in
``before``), listing what; ERP calls closer than the limit are listed with the syncs that made
them (the succeeded run whose start-finish span holds each call).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT, pct
from bench.workers import cpu_seconds
from config.keys import KeySpace
from config.models import RunRecord, SyncKind
from erp_sync.infra.slots import task_id
from erp_sync.runs.records import RunRecords
from erp_sync.throttle.ratelimit import CompanyLimit, set_company_limit
from tests.support import procs
from tests.support.erp import Sender, small_company
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs

HEALTHY, SLOW, WARM = "healthy", "slow", "warm"
HEALTHY_PROJECTS = tuple(f"h{n:02d}" for n in range(10))
SLOW_PROJECTS = tuple(f"s{n:02d}" for n in range(50))
SLOW_RATE = 1.0  # the slow company's ERP limit, calls/s (burst 1)
SCENARIOS = ("alone", "neighbour", "before")
# Opt-in (--only): ``before`` with the slow company's default cap (2), which still defers.
EXTRA = ("before-capped",)
LABELS = {
    "alone": "alone",
    "neighbour": "with slow neighbour",
    "before": "with slow neighbour, before deferral (waits slept in the slot, slow cap "
    "50; shorter stream)",
    "before-capped": "with slow neighbour, DEFER_AFTER=1000, slow cap 2 (cap still defers)",
}
TARGET_RATIO = 1.5
STATS = ("p50", "p99", "max", "first", "p99_steady")
SLOT_BASE = 1_790_000_000  # slot epoch of the first publish; each publish gets its own slot
FINISHED = re.compile(r"finished company=(\S+) .*? outcome=(\S+) .*?task_id=(\S+)")
DEFERRED = re.compile(
    r"deferred company=(\S+) .* wait=\S+ for (the ERP rate limit|the company's "
    r"concurrency cap|the ERP|its earlier delivery)"
)
LOG_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [A-Z]+/[^\]]*\] (.*)$", re.MULTILINE
)
RECEIVED = re.compile(r"^Task \S+\[(sync:([^:]+):\S+)\] received$")
EVENT = re.compile(r"^(deferred|finished) company=(\S+) ")
# The project worker as scripts/devstack.py starts it.
WORKER_ARGS = ["worker", "-Q", "project", "-P", "threads", "-c", "8", "-l", "INFO", "-E"]


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return int(seconds) + int(micros) / 1_000_000


def log_events(log: str) -> list[tuple[float, str]]:
    """The worker log's timestamped lines as (epoch seconds, message); the worker logs in local
    time with milliseconds, on the same machine (and clock) as Redis."""
    return [
        (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), text)
        for stamp, text in LOG_LINE.findall(log)
    ]


class CpuSampler(threading.Thread):
    """Samples a process's CPU seconds every ``interval`` (wall clock, epoch seconds)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append((time.time(), cpu_seconds(self.pid)))
            except (OSError, IndexError, ValueError):  # the process is gone
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def at(self, when: float) -> float:
        """CPU seconds at ``when``, interpolated between the samples around it."""
        before = [s for s in self.samples if s[0] <= when]
        after = [s for s in self.samples if s[0] >= when]
        if not before or not after:
            return float("nan")
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)


@dataclass
class Intake:
    """Head of line in one run with a neighbour: what the worker did between receiving the first
    slow message and receiving the first healthy one."""

    wall_ms: float  # first slow "received" -> first healthy "received"
    slow_received: int  # slow "received" lines in it (first deliveries and deferred copies)
    first_deliveries: int  # of those, slow task ids received for the first time
    deferrals: int  # slow "deferred" lines in it
    finished: int  # slow "finished" lines in it
    cpu_ms: float  # worker CPU over it
    wall_ms_per_deferral: float
    cpu_ms_per_deferral: float
    first_published_to_received_ms: float  # the first healthy sync: publish -> received
    first_received_to_started_ms: float  # ... received -> started (its run record)


@dataclass
class Slow:
    """The slow company's outcome in one ``neighbour`` run."""

    published: int
    succeeded: int
    statuses: dict[str, int]
    finished_lines: int  # "finished" log lines of its task ids (one per id when none ran twice)
    erp_calls: int
    min_gap_s: float  # closest two ERP calls
    max_calls_in_1s: int  # most calls in any window [t, t + 1 s)
    achieved_per_s: float  # calls over the span from the first to the last
    deferrals: int  # "deferred" log lines
    deferral_reasons: dict[str, int]  # the rate limit, the concurrency cap, ...
    deferrals_per_call: float
    completed_s: float  # from the first slow publish to the last slow finish (Redis time)


@dataclass
class Run:
    scenario: str
    round: int
    prefix: str
    load_before: tuple[float, float, float]
    healthy_published: int = 0
    healthy_ms: list[float] = field(default_factory=list)  # due-to-start, in publish order
    steady_from: int = 0  # healthy_ms[steady_from:] were published after the stream's 1st second
    healthy_statuses: dict[str, int] = field(default_factory=dict)
    healthy_deferrals: int = 0
    slow: Slow | None = None
    slow_deferrals: int = 0  # "deferred" lines of the slow company (any scenario)
    intake: Intake | None = None
    worker_cpu_s: float = 0.0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def stat(self, name: str) -> float:
        """``p50``, ``p99``, ``max``, ``first`` (the sync published right behind a backlog), or
        ``p99_steady`` (over the syncs published after the stream's first second)."""
        values = self.healthy_ms
        if not values:
            return float("nan")
        if name == "max":
            return max(values)
        if name == "first":
            return values[0]
        if name == "p99_steady":
            return pct(values[self.steady_from :], 99)
        return pct(values, float(name.removeprefix("p")))


class Bench:
    def __init__(self, workdir: Path, rate: float, seconds: float, before_seconds: float) -> None:
        self.dir = workdir
        self.rate, self.seconds, self.before_seconds = rate, seconds, before_seconds
        self.server = RedisServer(workdir / "redis", extra=["--appendonly", "no"]).start()
        self.client: redis.Redis = self.server.client()

    def close(self) -> None:
        self.server.kill()

    def run(self, scenario: str, round_: int) -> Run:
        prefix = f"fair{uuid.uuid4().hex[:6]}"
        keys = KeySpace(prefix)
        env = {"ERP_SYNC_REDIS_URL": self.server.url, "ERP_SYNC_KEY_PREFIX": prefix}
        if scenario.startswith("before"):
            env["ERP_SYNC_DEFER_AFTER_SECONDS"] = "1000"
        result = Run(scenario, round_, prefix, os.getloadavg(), steady_from=round(self.rate))
        neighbour = scenario != "alone"
        small_company(self.client, keys, WARM, projects=("w0",)).ensure_seeded(WARM)
        small_company(self.client, keys, HEALTHY, projects=HEALTHY_PROJECTS).ensure_seeded(HEALTHY)
        if neighbour:
            small_company(self.client, keys, SLOW, projects=SLOW_PROJECTS).ensure_seeded(SLOW)
            set_company_limit(
                self.client,
                keys,
                SLOW,
                CompanyLimit(
                    rate=SLOW_RATE,
                    burst=1,
                    concurrency=len(SLOW_PROJECTS) if scenario == "before" else None,
                ),
            )
        name = f"{scenario}-{round_}"
        worker = procs.Proc(name, [*procs.CELERY, *WORKER_ARGS, "-n", f"{name}@%h"], env, self.dir)
        sender = Sender(env)
        sampler = CpuSampler(worker.pid)
        started = time.monotonic()
        try:
            worker.wait_for("ready", 60)
            warm = task_id(WARM, SyncKind.PAYMENTS, "w0", SLOT_BASE)
            sender.send(SyncKind.PAYMENTS, WARM, warm, "w0", slot_ts=SLOT_BASE)
            procs.wait_until(
                lambda: self.client.exists(keys.executed(warm)),
                60,
                f"the warm-up sync never finished; see {worker.log}",
            )
            sampler.start()
            cpu0 = cpu_seconds(worker.pid)
            slow_published = self._publish_slow(sender) if neighbour else {}
            seconds = self.before_seconds if scenario == "before" else self.seconds
            healthy_published = self._publish_healthy(sender, seconds)
            result.healthy_published = len(healthy_published)
            self._wait(
                keys, healthy_published, 60 + 2 * len(SLOW_PROJECTS) / SLOW_RATE, "healthy", result
            )
            if scenario == "neighbour":
                self._wait(
                    keys, slow_published, 60 + 3 * len(SLOW_PROJECTS) / SLOW_RATE, "slow", result
                )
            result.worker_cpu_s = round(cpu_seconds(worker.pid) - cpu0, 2)
            if not worker.alive():
                result.problems.append(f"the worker exited (code {worker.popen.returncode})")
        finally:
            sampler.stop()
            sender.close()
            worker.stop(timeout=10)
            result.wall_s = round(time.monotonic() - started, 1)
        log = worker.output()
        self._check_log(log, result, worker.log)
        self._healthy(keys, healthy_published, log, result)
        result.slow_deferrals = sum(1 for c, _why in DEFERRED.findall(log) if c == SLOW)
        if neighbour:
            result.intake = self._intake(keys, log, healthy_published, sampler)
        if scenario == "before" and result.slow_deferrals:
            result.problems.append(
                f"before: {result.slow_deferrals} slow syncs deferred (the old "
                "behaviour never defers)"
            )
        if scenario == "neighbour":
            result.slow = self._slow(keys, slow_published, log, result)
        if result.problems:
            kept = ROOT / "bench" / "results" / f"fairness-worker-{name}-{prefix}.log"
            shutil.copyfile(worker.log, kept)
            result.problems.append(f"worker log kept in {kept.relative_to(ROOT)}")
        return result

    def _publish_slow(self, sender: Sender) -> dict[str, float]:
        """All 50 at once (one after the other, as fast as the broker takes them)."""
        published: dict[str, float] = {}
        for n, project in enumerate(SLOW_PROJECTS):
            slot = SLOT_BASE + 1 + n
            tid = task_id(SLOW, SyncKind.PAYMENTS, project, slot)
            published[tid] = redis_now(self.client)
            sender.send(SyncKind.PAYMENTS, SLOW, tid, project, slot_ts=slot)
        return published

    def _publish_healthy(self, sender: Sender, seconds: float) -> dict[str, float]:
        """``rate`` per second for ``seconds``, round-robin over the projects, on a fixed beat."""
        published: dict[str, float] = {}
        count = round(self.rate * seconds)
        t0 = time.monotonic()
        for n in range(count):
            delay = t0 + n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            project = HEALTHY_PROJECTS[n % len(HEALTHY_PROJECTS)]
            slot = SLOT_BASE + 1000 + n
            tid = task_id(HEALTHY, SyncKind.PAYMENTS, project, slot)
            published[tid] = redis_now(self.client)
            sender.send(SyncKind.PAYMENTS, HEALTHY, tid, project, slot_ts=slot)
        return published

    def _wait(
        self, keys: KeySpace, published: dict[str, float], timeout: float, who: str, result: Run
    ) -> None:
        markers = [keys.executed(t) for t in published]
        try:
            procs.wait_until(
                lambda: self.client.exists(*markers) == len(markers), timeout, interval=0.25
            )
        except AssertionError:
            done = int(self.client.exists(*markers))
            result.problems.append(
                f"{who}: only {done} of {len(markers)} syncs completed within {timeout:g} s"
            )

    def _records(
        self, keys: KeySpace, company: str, published: dict[str, float]
    ) -> dict[str, RunRecord]:
        records = recent_runs(RunRecords(self.client, keys), company, 1000)
        return {r.task_id: r for r in records if r.task_id in published}

    def _check_log(self, log: str, result: Run, path: Path) -> None:
        for marker in ("Traceback", ": CRITICAL/", ": ERROR/", "WorkerLostError"):
            if marker in log:
                line = next(ln for ln in log.splitlines() if marker in ln)
                result.problems.append(f"worker log has {marker!r} ({path.name}): {line[:300]}")

    def _healthy(self, keys: KeySpace, published: dict[str, float], log: str, result: Run) -> None:
        records = self._records(keys, HEALTHY, published)
        result.healthy_statuses = dict(Counter(r.status for r in records.values()))
        result.healthy_deferrals = sum(1 for c, _why in DEFERRED.findall(log) if c == HEALTHY)
        result.healthy_ms = [
            round((records[t].started_at.timestamp() - at) * 1000, 1)
            for t, at in published.items()
            if t in records
        ]
        bad = {t: r.status for t, r in records.items() if r.status != "succeeded"}
        missing = sorted(set(published) - set(records))
        if missing:
            result.problems.append(
                f"healthy: no history record for {missing[:5]} ({len(missing)} missing)"
            )
        if bad:
            result.problems.append(f"healthy: not succeeded: {dict(list(bad.items())[:5])}")
        self._once(log, published, "healthy", result)

    def _once(self, log: str, published: dict[str, float], who: str, result: Run) -> int:
        """Exactly one ``finished`` log line per published task id; returns the line count."""
        lines = Counter(t for _c, _o, t in FINISHED.findall(log) if t in published)
        twice = {t: n for t, n in lines.items() if n > 1}
        never = sorted(set(published) - set(lines))
        if twice:
            result.problems.append(f"{who}: finished more than once: {twice}")
        if never:
            result.problems.append(f"{who}: never finished: {never[:5]} ({len(never)})")
        return sum(lines.values())

    def _intake(
        self, keys: KeySpace, log: str, healthy: dict[str, float], sampler: CpuSampler
    ) -> Intake | None:
        events = log_events(log)
        received = [
            (t, m.group(1), m.group(2)) for t, text in events if (m := RECEIVED.match(text))
        ]
        first_slow = next((t for t, _tid, c in received if c == SLOW), None)
        first_healthy = next(((t, tid) for t, tid, c in received if c == HEALTHY), None)
        if first_slow is None or first_healthy is None:
            return None
        end, tid = first_healthy
        seen: set[str] = set()
        slow_received = first_deliveries = 0
        for t, rid, company in received:
            if company == SLOW and t < end:
                slow_received += 1
                first_deliveries += rid not in seen
                seen.add(rid)
        acts = Counter(
            m.group(1)
            for t, text in events
            if first_slow <= t < end and (m := EVENT.match(text)) and m.group(2) == SLOW
        )
        wall = (end - first_slow) * 1000
        cpu = (sampler.at(end) - sampler.at(first_slow)) * 1000
        deferrals = acts.get("deferred", 0)
        record = RunRecords(self.client, keys).get(HEALTHY, tid)
        started = record.started_at.timestamp() if record else float("nan")
        return Intake(
            wall_ms=round(wall, 1),
            slow_received=slow_received,
            first_deliveries=first_deliveries,
            deferrals=deferrals,
            finished=acts.get("finished", 0),
            cpu_ms=round(cpu, 1),
            wall_ms_per_deferral=round(wall / deferrals, 2) if deferrals else float("nan"),
            cpu_ms_per_deferral=round(cpu / deferrals, 2) if deferrals else float("nan"),
            first_published_to_received_ms=round((end - healthy[tid]) * 1000, 1),
            first_received_to_started_ms=round((started - end) * 1000, 1),
        )

    def _slow(self, keys: KeySpace, published: dict[str, float], log: str, result: Run) -> Slow:
        records = self._records(keys, SLOW, published)
        statuses = Counter[str](r.status for r in records.values())
        calls = sorted(float(t) for t in self.client.lrange(keys.erp_calls(SLOW), 0, -1))
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        window = max((sum(1 for u in calls if t <= u < t + 1.0) for t in calls), default=0)
        finishes = [r.finished_at.timestamp() for r in records.values() if r.finished_at]
        slow = Slow(
            published=len(published),
            succeeded=statuses.get("succeeded", 0),
            statuses=dict(statuses),
            finished_lines=self._once(log, published, "slow", result),
            erp_calls=len(calls),
            min_gap_s=round(min(gaps), 4) if gaps else float("nan"),
            max_calls_in_1s=window,
            achieved_per_s=round((len(calls) - 1) / (calls[-1] - calls[0]), 3)
            if len(calls) > 1
            else float("nan"),
            deferrals=sum(1 for c, _why in DEFERRED.findall(log) if c == SLOW),
            deferral_reasons=dict(Counter(why for c, why in DEFERRED.findall(log) if c == SLOW)),
            deferrals_per_call=round(
                sum(1 for c, _w in DEFERRED.findall(log) if c == SLOW) / len(calls), 2
            )
            if calls
            else float("nan"),
            completed_s=round(max(finishes) - min(published.values()), 1)
            if finishes
            else float("nan"),
        )
        if slow.succeeded != slow.published:
            result.problems.append(
                f"slow: {slow.succeeded} of {slow.published} succeeded ({slow.statuses})"
            )
        if slow.erp_calls != slow.published:
            result.problems.append(
                f"slow: {slow.erp_calls} ERP calls for {slow.published} one-page syncs"
            )
        if gaps and min(gaps) < 1 / SLOW_RATE:

            def owner(call: float) -> str:
                """The succeeded run whose start-finish span holds the call."""
                for r in records.values():
                    if (
                        r.status == "succeeded"
                        and r.finished_at
                        and r.started_at.timestamp() <= call <= r.finished_at.timestamp()
                    ):
                        return (
                            f"{r.task_id} (started {r.started_at.timestamp():.4f}, finished "
                            f"{r.finished_at.timestamp():.4f}, attempt {r.attempt})"
                        )
                return "no succeeded run spans it"

            close = [
                f"{a:.4f} by {owner(a)} and {b:.4f} by {owner(b)}: {b - a:.4f} s apart"
                for a, b in itertools.pairwise(calls)
                if b - a < 1 / SLOW_RATE
            ]
            result.problems.append(
                f"slow: ERP calls closer than {1 / SLOW_RATE:g} s: " + "; ".join(close)
            )
        return slow


def summary(runs: list[Run]) -> dict[str, Any]:
    """Medians and spreads per scenario, and the neighbour/alone p99 ratio."""
    out: dict[str, Any] = {}
    for scenario in (*SCENARIOS, *EXTRA):
        mine = [r for r in runs if r.scenario == scenario and r.healthy_ms]
        if not mine:
            continue
        row: dict[str, Any] = {
            "runs": len(mine),
            "healthy_syncs": [r.healthy_published for r in mine],
        }
        for stat in STATS:
            values = [r.stat(stat) for r in mine]
            row[stat] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
        row["healthy_deferrals"] = [r.healthy_deferrals for r in mine]
        row["slow_deferrals"] = [r.slow_deferrals for r in mine]
        row["worker_cpu_s"] = [r.worker_cpu_s for r in mine]
        row["load_1m"] = [round(r.load_before[0], 2) for r in mine]
        slows = [r.slow for r in mine if r.slow is not None]
        if slows:
            row["slow"] = {
                "succeeded": [s.succeeded for s in slows],
                "erp_calls": [s.erp_calls for s in slows],
                "min_gap_s": [s.min_gap_s for s in slows],
                "max_calls_in_1s": [s.max_calls_in_1s for s in slows],
                "achieved_per_s": [s.achieved_per_s for s in slows],
                "deferrals": [s.deferrals for s in slows],
                "deferrals_rate_limit": [
                    s.deferral_reasons.get("the ERP rate limit", 0) for s in slows
                ],
                "deferrals_per_call": [s.deferrals_per_call for s in slows],
                "completed_s": [s.completed_s for s in slows],
            }
        intakes = [r.intake for r in mine if r.intake is not None]
        if intakes:
            row["intake"] = {
                name: [getattr(i, name) for i in intakes] for name in Intake.__dataclass_fields__
            }
        out[scenario] = row
    alone, neighbour = out.get("alone"), out.get("neighbour")
    if alone and neighbour:
        out["ratio_p99"] = neighbour["p99"]["median"] / alone["p99"]["median"]
        rounds = sorted({r.round for r in runs})
        by = {(r.scenario, r.round): r.stat("p99") for r in runs if r.healthy_ms}
        per_round = [
            by[("neighbour", n)] / by[("alone", n)]
            for n in rounds
            if ("neighbour", n) in by and ("alone", n) in by
        ]
        out["ratio_p99_per_round"] = [round(x, 3) for x in per_round]
    return out


def spread(row: dict[str, Any], stat: str) -> str:
    s = row[stat]
    if s["min"] == s["max"]:
        return f"{s['median']:.0f}"
    return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"


def listed(values: list[Any]) -> str:
    """Median (min-max) of one figure over the runs; just the value when they agree."""
    if min(values) == max(values):
        return f"{values[0]:g}"
    return f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"


def table(
    s: dict[str, Any],
    rate: float,
    seconds: float,
    before_seconds: float,
    command: str,
    load: tuple[float, ...],
    cpus: int | None,
) -> str:
    """The run as markdown, ready to paste into bench/README.md."""
    lines = [
        f"```sh\n{command}\n```",
        "",
        f"Load average at start {' '.join(f'{x:.2f}' for x in load)} ({cpus} CPUs). "
        f"Healthy company: payments syncs at {rate:g}/s over {seconds:g} s "
        f"({round(rate * seconds)} syncs; *before*: {before_seconds:g} s, "
        f"{round(rate * before_seconds)} syncs); due-to-start latency in ms, median of runs "
        "(min-max). *first*: the first healthy sync (published right behind the slow "
        "backlog); *p99 after 1 s*: over the syncs published after the stream's first "
        "second. p99 is nearest-rank (the 2nd largest of 60, the largest of 20).",
        "",
        "| scenario | runs | healthy syncs | healthy p50 | healthy p99 | healthy max | first "
        "| p99 after 1 s | slow deferrals | worker CPU (s) | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in (*SCENARIOS, *EXTRA):
        if scenario in s:
            row = s[scenario]
            lines.append(
                f"| {LABELS[scenario]} | {row['runs']} | "
                f"{listed(row['healthy_syncs'])} | {spread(row, 'p50')} | "
                f"{spread(row, 'p99')} | {spread(row, 'max')} | "
                f"{spread(row, 'first')} | {spread(row, 'p99_steady')} | "
                f"{listed(row['slow_deferrals']) if scenario != 'alone' else '-'} | "
                f"{listed(row['worker_cpu_s'])} | {listed(row['load_1m'])} |"
            )
    if "ratio_p99" in s:
        per = s["ratio_p99_per_round"]
        verdict = "met" if s["ratio_p99"] <= TARGET_RATIO else "NOT met"
        lines += [
            "",
            f"Ratio healthy p99 neighbour/alone: **{s['ratio_p99']:.2f}** (per round "
            f"{min(per):.2f}-{max(per):.2f}); target <= {TARGET_RATIO:g}: {verdict}",
        ]
        neighbour = s["neighbour"]
        lines.append(
            f"Without the backlog's head of line (p99 after 1 s): "
            f"{neighbour['p99_steady']['median'] / s['alone']['p99_steady']['median']:.2f}"
            "x alone"
        )
    for scenario in ("before", *EXTRA):
        if scenario in s and "alone" in s:
            times = s[scenario]["p99"]["median"] / s["alone"]["p99"]["median"]
            lines.append(
                f"{LABELS[scenario]}: healthy p99 "
                f"{s[scenario]['p99']['median']:.0f} ms, {times:.0f}x alone"
            )
    slow = s.get("neighbour", {}).get("slow")
    if slow:
        lines += [
            "",
            f"Slow company (50 one-page payments syncs, ERP {SLOW_RATE:g} call/s, "
            "burst 1), per neighbour run:",
            "",
            "| succeeded | ERP calls | min call gap (s) | max calls in 1 s | achieved "
            "calls/s | deferrals (of which for the rate limit) | deferrals per ERP call "
            "| completed after (s) |",
            "|---|---|---|---|---|---|---|---|",
            f"| {listed(slow['succeeded'])} | {listed(slow['erp_calls'])} | "
            f"{listed(slow['min_gap_s'])} | {listed(slow['max_calls_in_1s'])} | "
            f"{listed(slow['achieved_per_s'])} | {listed(slow['deferrals'])} "
            f"({listed(slow['deferrals_rate_limit'])}) | "
            f"{listed(slow['deferrals_per_call'])} | {listed(slow['completed_s'])} |",
        ]
    intake = s.get("neighbour", {}).get("intake")
    if intake:
        lines += [
            "",
            "Head of line, per neighbour run: the worker's *intake* from the first slow "
            "message received to the first healthy one received (worker log; CPU sampled "
            "every 20 ms), and the first healthy sync's latency split:",
            "",
            "| intake (ms) | slow messages received (first deliveries) | deferrals in it "
            "| worker CPU in it (ms) | wall per deferral (ms) | CPU per deferral (ms) "
            "| first healthy: publish -> received (ms) | received -> started (ms) |",
            "|---|---|---|---|---|---|---|---|",
            f"| {listed(intake['wall_ms'])} | {listed(intake['slow_received'])} "
            f"({listed(intake['first_deliveries'])}) | {listed(intake['deferrals'])} | "
            f"{listed(intake['cpu_ms'])} | {listed(intake['wall_ms_per_deferral'])} | "
            f"{listed(intake['cpu_ms_per_deferral'])} | "
            f"{listed(intake['first_published_to_received_ms'])} | "
            f"{listed(intake['first_received_to_started_ms'])} |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of every scenario (3)")
    parser.add_argument("--rate", type=float, default=5, help="healthy syncs per second (5)")
    parser.add_argument("--seconds", type=float, default=12, help="healthy publishing time (12)")
    parser.add_argument(
        "--before-seconds",
        type=float,
        default=4,
        help="healthy publishing time in the before scenario (4)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios ({','.join(SCENARIOS)}; also {','.join(EXTRA)})",
    )
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="copy every run's worker log into DIR"
    )
    args = parser.parse_args()
    only = [s for s in (*SCENARIOS, *EXTRA) if s in args.only.split(",")]
    began, load_start = time.monotonic(), os.getloadavg()
    print(
        f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)} "
        f"({os.cpu_count()} CPUs)",
        flush=True,
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.rate, args.seconds, args.before_seconds)
        try:
            for round_ in range(1, args.runs + 1):
                for scenario in only:
                    run = bench.run(scenario, round_)
                    if args.keep:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(
                            Path(tmp) / f"{scenario}-{round_}.log",
                            args.keep / f"{scenario}-{round_}.log",
                        )
                    runs.append(run)
                    slow, intake = run.slow, run.intake
                    print(
                        f"{scenario} #{round_}: load {run.load_before[0]:.2f}, "
                        f"{run.healthy_published} healthy, "
                        f"p50 {run.stat('p50'):.0f} ms, p99 {run.stat('p99'):.0f} ms, "
                        f"max {run.stat('max'):.0f} ms, first {run.stat('first'):.0f} ms, "
                        f"p99 after 1 s {run.stat('p99_steady'):.0f} ms, "
                        f"healthy {run.healthy_statuses} "
                        f"deferred {run.healthy_deferrals}x"
                        + (f"; slow deferred {run.slow_deferrals}x" if scenario != "alone" else "")
                        + (
                            f"; slow {slow.statuses}, {slow.erp_calls} calls, min gap "
                            f"{slow.min_gap_s} s, max {slow.max_calls_in_1s} in 1 s, "
                            f"{slow.deferrals_per_call} deferrals per call, done after "
                            f"{slow.completed_s} s"
                            if slow
                            else ""
                        )
                        + (
                            f"; intake {intake.wall_ms} ms, {intake.slow_received} slow "
                            f"received, {intake.deferrals} deferrals, CPU {intake.cpu_ms} ms, "
                            f"first healthy published->received "
                            f"{intake.first_published_to_received_ms} ms, received->started "
                            f"{intake.first_received_to_started_ms} ms"
                            if intake
                            else ""
                        )
                        + f"; worker CPU {run.worker_cpu_s} s, wall {run.wall_s} s",
                        flush=True,
                    )
                    for problem in run.problems:
                        print(f"  PROBLEM: {problem}", flush=True)
        finally:
            bench.close()
    result = {
        "rate": args.rate,
        "seconds": args.seconds,
        "before_seconds": args.before_seconds,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "wall_s": round(time.monotonic() - began, 1),
        "summary": summary(runs),
        "runs": [asdict(r) for r in runs],
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "fairness.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    defaults = parser.parse_args([])
    options = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name in ("runs", "rate", "seconds", "before_seconds", "only")
        if getattr(args, name) != getattr(defaults, name)
    ]
    command = " ".join([".venv/bin/python -m bench.fairness", *options])
    print()
    print(
        table(
            result["summary"],
            args.rate,
            args.seconds,
            args.before_seconds,
            command,
            load_start,
            os.cpu_count(),
        )
    )
    print()
    print(
        f"load average at end: {' '.join(f'{x:.2f}' for x in result['load_end'])}; "
        f"whole run {result['wall_s']} s; raw numbers in bench/results/fairness.json"
    )
    problems = [f"{r.scenario} #{r.round}: {p}" for r in runs for p in r.problems]
    if problems:
        print(f"\n{len(problems)} PROBLEM(S): the product misbehaved, see above")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
