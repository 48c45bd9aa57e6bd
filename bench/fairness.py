"""Fairness benchmark: does a slow neighbour delay a healthy company's syncs?

Run on purpose (not part of the tests), from the repo root:

    .venv/bin/python -m bench.fairness [--runs 3] [--rate 5] [--seconds 12] [--json]
                                       [--only alone,neighbour,before] [--keep DIR]

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
- ``before`` (reference): ``neighbour`` with ``ERP_SYNC_DEFER_AFTER_SECONDS=1000``, so every
  rate-limit wait is slept in the worker slot as before deferral existed. The company's
  concurrency cap still applies (a sync over the cap is deferred whatever the setting). Only the
  healthy company is measured; the worker is stopped without waiting for the slow company.
- ``before-uncapped`` (opt-in, ``--only before-uncapped``; about 50 s a run): ``before`` with the
  slow company's cap raised to 50 as well, i.e. the worker before part 3 altogether.

The scenarios are interleaved (alone, neighbour, before; ``--runs`` rounds), so drifting machine
load hits them alike. Each figure is the median of the runs with the spread (min-max); the
headline is the ratio of the healthy p99 with a neighbour to the healthy p99 alone (target
<= 1.5). Percentiles are nearest-rank over one run's syncs (60 at 5/s for 12 s: the p99 is the
second-largest). Also shown: the first healthy sync's latency (published right behind the slow
backlog) and the p99 over the syncs published after the stream's first second, which separate
the backlog's head-of-line cost from the steady state. The machine's load average is recorded
before each run (other work on the machine shows there). Prints a markdown table
and writes raw numbers to ``bench/results/fairness.json``; exits 1 if the product misbehaved
(a sync lost, run twice or failed, the ERP limit beaten, a worker crash), listing what.
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
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT, pct
from bench.workers import cpu_seconds
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.history import History, RunRecord
from erp_sync.ratelimit import CompanyLimit, set_company_limit
from erp_sync.slots import task_id
from tests.support import procs
from tests.support.erp import Sender, small_company
from tests.support.redisproc import RedisServer

HEALTHY, SLOW, WARM = "healthy", "slow", "warm"
HEALTHY_PROJECTS = tuple(f"h{n:02d}" for n in range(10))
SLOW_PROJECTS = tuple(f"s{n:02d}" for n in range(50))
SLOW_RATE = 1.0  # the slow company's ERP limit, calls/s (burst 1)
SCENARIOS = ("alone", "neighbour", "before")
# Opt-in (--only): ``before`` with the slow company's concurrency cap lifted as well, i.e. the
# worker as it was before part 3 altogether (waits slept in the slot, no cap).
EXTRA = ("before-uncapped",)
LABELS = {"alone": "alone", "neighbour": "with slow neighbour",
          "before": "with slow neighbour, DEFER_AFTER=1000 (before)",
          "before-uncapped": "with slow neighbour, DEFER_AFTER=1000, slow cap 50"}
TARGET_RATIO = 1.5
STATS = ("p50", "p99", "max", "first", "p99_steady")
SLOT_BASE = 1_790_000_000  # slot epoch of the first publish; each publish gets its own slot
FINISHED = re.compile(r"finished company=(\S+) .*? outcome=(\S+) .*?task_id=(\S+)")
DEFERRED = re.compile(r"deferred company=(\S+) .* wait=\S+ for (the ERP rate limit|the company's "
                      r"concurrency cap|the ERP|its earlier delivery)")
# The project worker as scripts/devstack.py starts it.
WORKER_ARGS = ["worker", "-Q", "project", "-P", "threads", "-c", "8", "-l", "INFO", "-E"]


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return int(seconds) + int(micros) / 1_000_000


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
    completed_s: float  # from the first slow publish to the last slow finish (Redis time)


@dataclass
class Run:
    scenario: str
    round: int
    prefix: str
    load_before: tuple[float, float, float]
    healthy_ms: list[float] = field(default_factory=list)  # due-to-start, in publish order
    steady_from: int = 0  # healthy_ms[steady_from:] were published after the stream's 1st second
    healthy_statuses: dict[str, int] = field(default_factory=dict)
    healthy_deferrals: int = 0
    slow: Slow | None = None
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
            return pct(values[self.steady_from:], 99)
        return pct(values, float(name.removeprefix("p")))


class Bench:
    def __init__(self, workdir: Path, rate: float, seconds: float) -> None:
        self.dir = workdir
        self.rate, self.seconds = rate, seconds
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
        small_company(self.client, keys, HEALTHY, projects=HEALTHY_PROJECTS
                      ).ensure_seeded(HEALTHY)
        if neighbour:
            small_company(self.client, keys, SLOW, projects=SLOW_PROJECTS).ensure_seeded(SLOW)
            set_company_limit(self.client, keys, SLOW, CompanyLimit(
                rate=SLOW_RATE, burst=1,
                concurrency=len(SLOW_PROJECTS) if scenario == "before-uncapped" else None))
        name = f"{scenario}-{round_}"
        worker = procs.Proc(name, [*procs.CELERY, *WORKER_ARGS, "-n", f"{name}@%h"], env,
                            self.dir)
        sender = Sender(env)
        started = time.monotonic()
        try:
            worker.wait_for("ready", 60)
            warm = task_id(WARM, SyncKind.PAYMENTS, "w0", SLOT_BASE)
            sender.send(SyncKind.PAYMENTS, WARM, warm, "w0", slot_ts=SLOT_BASE)
            procs.wait_until(lambda: self.client.exists(keys.executed(warm)), 60,
                             f"the warm-up sync never finished; see {worker.log}")
            cpu0 = cpu_seconds(worker.pid)
            slow_published = self._publish_slow(sender) if neighbour else {}
            healthy_published = self._publish_healthy(sender)
            self._wait(keys, healthy_published, 60 + 2 * len(SLOW_PROJECTS) / SLOW_RATE,
                       "healthy", result)
            if scenario == "neighbour":
                self._wait(keys, slow_published, 60 + 3 * len(SLOW_PROJECTS) / SLOW_RATE,
                           "slow", result)
            result.worker_cpu_s = round(cpu_seconds(worker.pid) - cpu0, 2)
            if not worker.alive():
                result.problems.append(f"the worker exited (code {worker.popen.returncode})")
        finally:
            sender.close()
            worker.stop(timeout=10)
            result.wall_s = round(time.monotonic() - started, 1)
        log = worker.output()
        self._check_log(log, result, worker.log)
        self._healthy(keys, healthy_published, log, result)
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

    def _publish_healthy(self, sender: Sender) -> dict[str, float]:
        """``rate`` per second for ``seconds``, round-robin over the projects, on a fixed beat."""
        published: dict[str, float] = {}
        count = round(self.rate * self.seconds)
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

    def _wait(self, keys: KeySpace, published: dict[str, float], timeout: float, who: str,
              result: Run) -> None:
        markers = [keys.executed(t) for t in published]
        try:
            procs.wait_until(lambda: self.client.exists(*markers) == len(markers), timeout,
                             interval=0.25)
        except AssertionError:
            done = int(self.client.exists(*markers))
            result.problems.append(f"{who}: only {done} of {len(markers)} syncs completed "
                                   f"within {timeout:g} s")

    def _records(self, keys: KeySpace, company: str,
                 published: dict[str, float]) -> dict[str, RunRecord]:
        records = History(self.client, keys).recent(company, 1000)
        return {r.task_id: r for r in records if r.task_id in published}

    def _check_log(self, log: str, result: Run, path: Path) -> None:
        for marker in ("Traceback", ": CRITICAL/", ": ERROR/", "WorkerLostError"):
            if marker in log:
                line = next(ln for ln in log.splitlines() if marker in ln)
                result.problems.append(f"worker log has {marker!r} ({path.name}): {line[:300]}")

    def _healthy(self, keys: KeySpace, published: dict[str, float], log: str,
                 result: Run) -> None:
        records = self._records(keys, HEALTHY, published)
        result.healthy_statuses = dict(Counter(r.status for r in records.values()))
        result.healthy_deferrals = sum(1 for c, _why in DEFERRED.findall(log) if c == HEALTHY)
        result.healthy_ms = [
            round((records[t].started_at.timestamp() - at) * 1000, 1)
            for t, at in published.items() if t in records]
        bad = {t: r.status for t, r in records.items() if r.status != "succeeded"}
        missing = sorted(set(published) - set(records))
        if missing:
            result.problems.append(f"healthy: no history record for {missing[:5]} "
                                   f"({len(missing)} missing)")
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

    def _slow(self, keys: KeySpace, published: dict[str, float], log: str,
              result: Run) -> Slow:
        records = self._records(keys, SLOW, published)
        statuses = Counter[str](r.status for r in records.values())
        calls = sorted(float(t) for t in self.client.lrange(keys.erp_calls(SLOW), 0, -1))
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        window = max((sum(1 for u in calls if t <= u < t + 1.0) for t in calls), default=0)
        finishes = [r.finished_at.timestamp() for r in records.values() if r.finished_at]
        slow = Slow(
            published=len(published), succeeded=statuses.get("succeeded", 0),
            statuses=dict(statuses), finished_lines=self._once(log, published, "slow", result),
            erp_calls=len(calls), min_gap_s=round(min(gaps), 4) if gaps else float("nan"),
            max_calls_in_1s=window,
            achieved_per_s=round((len(calls) - 1) / (calls[-1] - calls[0]), 3)
            if len(calls) > 1 else float("nan"),
            deferrals=sum(1 for c, _why in DEFERRED.findall(log) if c == SLOW),
            deferral_reasons=dict(Counter(why for c, why in DEFERRED.findall(log) if c == SLOW)),
            completed_s=round(max(finishes) - min(published.values()), 1)
            if finishes else float("nan"))
        if slow.succeeded != slow.published:
            result.problems.append(f"slow: {slow.succeeded} of {slow.published} succeeded "
                                   f"({slow.statuses})")
        if slow.erp_calls != slow.published:
            result.problems.append(f"slow: {slow.erp_calls} ERP calls for {slow.published} "
                                   "one-page syncs")
        if gaps and min(gaps) < 1 / SLOW_RATE:
            close = [(round(a, 4), round(b, 4)) for a, b in itertools.pairwise(calls)
                     if b - a < 1 / SLOW_RATE]
            result.problems.append(f"slow: ERP calls closer than {1 / SLOW_RATE:g} s: {close}")
        return slow


def summary(runs: list[Run]) -> dict[str, Any]:
    """Medians and spreads per scenario, and the neighbour/alone p99 ratio."""
    out: dict[str, Any] = {}
    for scenario in (*SCENARIOS, *EXTRA):
        mine = [r for r in runs if r.scenario == scenario and r.healthy_ms]
        if not mine:
            continue
        row: dict[str, Any] = {"runs": len(mine)}
        for stat in STATS:
            values = [r.stat(stat) for r in mine]
            row[stat] = {"median": statistics.median(values), "min": min(values),
                         "max": max(values)}
        row["healthy_deferrals"] = [r.healthy_deferrals for r in mine]
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
                "deferrals_rate_limit": [s.deferral_reasons.get("the ERP rate limit", 0)
                                         for s in slows],
                "completed_s": [s.completed_s for s in slows]}
        out[scenario] = row
    alone, neighbour = out.get("alone"), out.get("neighbour")
    if alone and neighbour:
        out["ratio_p99"] = neighbour["p99"]["median"] / alone["p99"]["median"]
        rounds = sorted({r.round for r in runs})
        by = {(r.scenario, r.round): r.stat("p99") for r in runs if r.healthy_ms}
        per_round = [by[("neighbour", n)] / by[("alone", n)] for n in rounds
                     if ("neighbour", n) in by and ("alone", n) in by]
        out["ratio_p99_per_round"] = [round(x, 3) for x in per_round]
    return out


def spread(row: dict[str, Any], stat: str) -> str:
    s = row[stat]
    return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"


def listed(values: list[Any]) -> str:
    return f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"


def table(s: dict[str, Any], rate: float, seconds: float) -> str:
    n = round(rate * seconds)
    lines = [f"Healthy company: {n} payments syncs at {rate:g}/s over {seconds:g} s; "
             "due-to-start latency in ms, median of runs (min-max). *first*: the first healthy "
             "sync (published right behind the slow backlog); *p99 after 1 s*: over the syncs "
             "published after the stream's first second.", "",
             "| scenario | runs | healthy p50 | healthy p99 | healthy max | first | p99 after 1 s "
             "| healthy deferrals | worker CPU (s) | load 1m |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for scenario in (*SCENARIOS, *EXTRA):
        if scenario in s:
            row = s[scenario]
            lines.append(f"| {LABELS[scenario]} | {row['runs']} | {spread(row, 'p50')} | "
                         f"{spread(row, 'p99')} | {spread(row, 'max')} | "
                         f"{spread(row, 'first')} | {spread(row, 'p99_steady')} | "
                         f"{listed(row['healthy_deferrals'])} | {listed(row['worker_cpu_s'])} | "
                         f"{listed(row['load_1m'])} |")
    if "ratio_p99" in s:
        per = s["ratio_p99_per_round"]
        verdict = "met" if s["ratio_p99"] <= TARGET_RATIO else "NOT met"
        lines += ["", f"Ratio healthy p99 neighbour/alone: **{s['ratio_p99']:.2f}** (per round "
                  f"{min(per):.2f}-{max(per):.2f}); target <= {TARGET_RATIO:g}: {verdict}"]
    for scenario in ("before", *EXTRA):
        if scenario in s and "alone" in s:
            times = s[scenario]["p99"]["median"] / s["alone"]["p99"]["median"]
            lines.append(f"{LABELS[scenario]}: healthy p99 "
                         f"{s[scenario]['p99']['median']:.0f} ms, {times:.2f}x alone")
    slow = s.get("neighbour", {}).get("slow")
    if slow:
        lines += ["", f"Slow company (50 one-page payments syncs, ERP {SLOW_RATE:g} call/s, "
                  "burst 1), per neighbour run:", "",
                  "| succeeded | ERP calls | min call gap (s) | max calls in 1 s | achieved "
                  "calls/s | deferrals (of which for the rate limit) | completed after (s) |",
                  "|---|---|---|---|---|---|---|",
                  f"| {listed(slow['succeeded'])} | {listed(slow['erp_calls'])} | "
                  f"{listed(slow['min_gap_s'])} | {listed(slow['max_calls_in_1s'])} | "
                  f"{listed(slow['achieved_per_s'])} | {listed(slow['deferrals'])} "
                  f"({listed(slow['deferrals_rate_limit'])}) | "
                  f"{listed(slow['completed_s'])} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of every scenario (3)")
    parser.add_argument("--rate", type=float, default=5, help="healthy syncs per second (5)")
    parser.add_argument("--seconds", type=float, default=12, help="healthy publishing time (12)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios ({','.join(SCENARIOS)}; also "
                        f"{','.join(EXTRA)})")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy every run's worker log into DIR")
    args = parser.parse_args()
    only = [s for s in (*SCENARIOS, *EXTRA) if s in args.only.split(",")]
    began, load_start = time.monotonic(), os.getloadavg()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)} "
          f"({os.cpu_count()} CPUs)", flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.rate, args.seconds)
        try:
            for round_ in range(1, args.runs + 1):
                for scenario in only:
                    run = bench.run(scenario, round_)
                    if args.keep:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(Path(tmp) / f"{scenario}-{round_}.log",
                                        args.keep / f"{scenario}-{round_}.log")
                    runs.append(run)
                    slow = run.slow
                    print(f"{scenario} #{round_}: load {run.load_before[0]:.2f}, "
                          f"p50 {run.stat('p50'):.0f} ms, p99 {run.stat('p99'):.0f} ms, "
                          f"max {run.stat('max'):.0f} ms, first {run.stat('first'):.0f} ms, "
                          f"p99 after 1 s {run.stat('p99_steady'):.0f} ms, "
                          f"healthy {run.healthy_statuses} "
                          f"deferred {run.healthy_deferrals}x"
                          + (f"; slow {slow.statuses}, {slow.erp_calls} calls, min gap "
                             f"{slow.min_gap_s} s, max {slow.max_calls_in_1s} in 1 s, "
                             f"{slow.deferrals} deferrals, done after {slow.completed_s} s"
                             if slow else "")
                          + f"; worker CPU {run.worker_cpu_s} s, wall {run.wall_s} s", flush=True)
                    for problem in run.problems:
                        print(f"  PROBLEM: {problem}", flush=True)
        finally:
            bench.close()
    result = {"rate": args.rate, "seconds": args.seconds, "load_start": load_start,
              "load_end": os.getloadavg(), "cpus": os.cpu_count(),
              "wall_s": round(time.monotonic() - began, 1),
              "summary": summary(runs), "runs": [asdict(r) for r in runs]}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "fairness.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    print()
    print(table(result["summary"], args.rate, args.seconds))
    print()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in result['load_end'])}; "
          f"whole run {result['wall_s']} s; raw numbers in bench/results/fairness.json")
    problems = [f"{r.scenario} #{r.round}: {p}" for r in runs for p in r.problems]
    if problems:
        print(f"\n{len(problems)} PROBLEM(S): the product misbehaved, see above")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
