"""Alert isolation benchmark: do slow webhook receivers delay another company's sync?

Run on purpose (not part of the tests), from the repo root:

    .venv/bin/python -m bench.alert_isolation [--runs 3] [--slow 20] [--hold 10] [--json]
        [--mode layouts|cap]

What it measures: the *start delay* of a healthy company's vendors sync triggered with
``erp-sync sync-now`` (its run's ``started_at`` minus Redis time read just before the command;
the CLI's own start, about a second here, is in every figure, the baseline included), and the
*alert delay* of that company's own ``failed`` alert (the moment its fast receiver got the POST
minus Redis time before the ``sync-now`` of a failing sync), with and without slow receivers.

How: one private ``redis-server`` (AOF off); each run under a fresh key prefix, with fresh worker
processes started with the argv of docker-compose.yml's worker services (``-P threads``, compose's
pool sizes, ``-l INFO``): ``deployed`` is compose's layout (``worker-company -Q company -c 16``,
``worker-alerts -Q alerts -c 8``); ``shared`` is the layout before (one ``-Q company,alerts -c 16``
worker). Each run warms its workers up with one sync of a company of its own. With ``slow``, a
company with ``--slow`` alert rules (20, the most a company may have) on a loopback receiver that
trickles its answer (a byte every 0.2 s, so no read timeout fires) for ``--hold`` seconds
(10) fails a sync, which queues one delivery per rule; the measured sync is triggered once the
receiver holds a full pool of them (8 in ``deployed``, 16 in ``shared``). The alert timeout is 60 s
(its maximum) and one attempt, so the hold, not the timeout, ends each delivery.

``--mode cap`` measures the per-company cap on deliveries in flight instead
(``erp_sync.alerts.inflight``), in compose's layout: the healthy company's alert delay (another
company's alert, queued behind the slow one's) with no slow receivers, and with them both
without the cap (``0``) and with the default (``2``), set for the worker processes with
``ERP_SYNC_ALERT_COMPANY_CONCURRENCY``.
``--mode layouts`` (the default) runs the four layout scenarios with the default cap.

The scenarios are interleaved (``--runs`` rounds), so drifting load hits them alike; each figure is
the median of the runs with the spread (min-max). The load average is recorded before each run.
Prints a markdown table with the command; writes raw numbers to ``bench/results/
alert_isolation.json`` (git ignored). Exits 1 if a measured sync or alert never came.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
import yaml

from bench.common import ROOT
from config.alerts import AlertEvent
from config.env import get_settings
from config.keys import KeySpace
from erp_sync.alerts.inflight import DEFAULT_CAP
from erp_sync.alerts.rules import AlertRules
from erp_sync.control.store import SettingsStore
from erp_sync.runs.records import RunRecords
from tests.support import procs
from tests.support.erp import small_company
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs
from tests.support.trickle import start_trickle_receiver

HEALTHY, SLOW, WARM = "healthy", "slowco", "warm"
# (layout, slow receivers, cap on a company's deliveries in flight: None is the default).
Scenario = tuple[str, bool, int | None]
SCENARIOS: dict[str, tuple[Scenario, ...]] = {
    "layouts": (
        ("deployed", False, None),
        ("deployed", True, None),
        ("shared", False, None),
        ("shared", True, None),
    ),
    "cap": (("deployed", False, 2), ("deployed", True, 0), ("deployed", True, 2)),
}
ENV = {
    "ERP_SYNC_ALERT_TIMEOUT_SECONDS": "60",
    "ERP_SYNC_ALERT_ATTEMPTS": "1",
    "ERP_SYNC_OUTBOUND_ALLOW": "127.0.0.1",  # the receivers are on loopback
}


def compose_workers() -> dict[str, list[str]]:
    """Each worker service of docker-compose.yml: its argv after ``celery -A worker``."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {
        name: [str(a) for a in s["command"][3:]]
        for name, s in services.items()
        if [str(a) for a in s.get("command") or []][:4] == ["celery", "-A", "worker", "worker"]
    }


def layout(name: str) -> dict[str, list[str]]:
    """The worker processes of a layout: compose's, or the one before (alerts on the company
    worker)."""
    workers = compose_workers()
    if name == "deployed":
        return {n: a for n, a in workers.items() if n in ("worker-company", "worker-alerts")}
    argv = list(workers["worker-company"])
    argv[argv.index("-Q") + 1] = "company,alerts"
    return {"worker-company": argv}


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@dataclass
class Run:
    layout: str
    slow: bool
    round: int
    load: float
    cap: int | None = None
    held_at_trigger: int = 0
    sync_delay_s: float | None = None
    alert_delay_s: float | None = None


class Bench:
    def __init__(self, workdir: Path, slow_rules: int, hold: float) -> None:
        self.dir, self.slow_rules, self.hold = workdir, slow_rules, hold
        self.server = RedisServer(workdir / "redis", extra=["--appendonly", "no"]).start()
        self.client: redis.Redis = self.server.client()
        # One SQLite database for every run (run history is keyed by company and prefix).
        self.database = f"sqlite:///{workdir / 'erp_sync.db'}"
        self.manage({"ERP_SYNC_DATABASE_URL": self.database}, "db", "upgrade")
        self.secret = subprocess.run(
            [sys.executable, "manage.py", "connection", "new-key"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def close(self) -> None:
        self.server.kill()

    def now(self) -> float:
        seconds, micros = self.client.time()
        return float(seconds) + micros / 1e6

    def manage(self, env: dict[str, str], *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=procs.process_env(env),
            capture_output=True,
            check=True,
            timeout=60,
        )

    def run(self, name: str, slow: bool, round_: int, cap: int | None = None) -> Run:
        prefix = f"iso{uuid.uuid4().hex[:6]}"
        keys = KeySpace(prefix)
        env = {
            "ERP_SYNC_REDIS_URL": self.server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_SECRET_KEY": self.secret,
            "ERP_SYNC_DATABASE_URL": self.database,
            **ENV,
            # The operator setting (None: its default); 0 turns the cap off.
            **({} if cap is None else {"ERP_SYNC_ALERT_COMPANY_CONCURRENCY": str(cap)}),
        }
        result = Run(name, slow, round_, os.getloadavg()[0], cap)
        data = {c: small_company(self.client, keys, c, projects=()) for c in (WARM, HEALTHY, SLOW)}
        rules = AlertRules(SettingsStore(self.client, keys))
        slow_hook = start_trickle_receiver(hold=self.hold)
        fast_hook = start_trickle_receiver()
        fast_hook.release()  # answers at once; records when each POST came
        rules.add(
            HEALTHY, "alice", url=fast_hook.url, events=[AlertEvent.FAILED], failures=1, secret=None
        )
        for _ in range(self.slow_rules if slow else 0):
            rules.add(
                SLOW,
                "alice",
                url=slow_hook.url,
                events=[AlertEvent.FAILED],
                failures=1,
                secret=None,
            )
        celery = procs.CELERY
        workers = [
            procs.Proc(
                f"{name}-{int(slow)}-{cap}-{round_}-{service}",
                [*celery, *argv],
                env,
                self.dir,
            )
            for service, argv in layout(name).items()
        ]
        alerts_slots = sum(
            int(option(a, "-c")) for a in layout(name).values() if "alerts" in option(a, "-Q")
        )
        try:
            for proc in workers:
                proc.wait_for("ready.", 90)
            self.manage(env, "sync-now", WARM, "vendors", "--as", "alice")
            self._wait_vendors(keys, WARM)
            if slow:
                data[SLOW].configure(SLOW, permanent="bad_credentials")
                self.manage(env, "sync-now", SLOW, "vendors", "--as", "alice")
                capped = DEFAULT_CAP if cap is None else cap or self.slow_rules
                want = min(self.slow_rules, alerts_slots, capped)
                procs.wait_until(lambda: slow_hook.held() >= want, 60, "slow deliveries not held")
                result.held_at_trigger = slow_hook.held()
            t0 = self.now()
            self.manage(env, "sync-now", HEALTHY, "vendors", "--as", "alice")
            started = self._wait_vendors(keys, HEALTHY)
            result.sync_delay_s = round(started - t0, 3)
            # The healthy company's own alert, queued behind the slow ones on the alerts queue.
            data[HEALTHY].configure(HEALTHY, permanent="bad_credentials")
            t1 = self.now()
            self.manage(env, "sync-now", HEALTHY, "jobs", "--as", "alice")
            procs.wait_until(lambda: fast_hook.taken, 180, "the healthy company's alert never came")
            result.alert_delay_s = round(fast_hook.taken[0].arrived - t1, 3)
        finally:
            slow_hook.release()
            procs.stop_all(workers, timeout=20)
            slow_hook.close()
            fast_hook.close()
        return result

    def _wait_vendors(self, keys: KeySpace, company: str) -> float:
        """Wait for the company's vendors run to succeed; its ``started_at`` (Redis time)."""
        found: list[float] = []

        def done() -> bool:
            for r in recent_runs(RunRecords(self.client, keys), company):
                if r.kind == "vendors" and r.status == "succeeded":
                    found.append(r.started_at.timestamp())
                    return True
            return False

        procs.wait_until(done, 120, f"the vendors sync of {company} never succeeded")
        return found[0]


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        f"`.venv/bin/python -m bench.alert_isolation --runs {args.runs} --slow {args.slow} "
        f"--hold {args.hold:g} --mode {args.mode}`; {os.cpu_count()} CPUs. "
        f"Median of {args.runs} (min-max), seconds.",
        "",
        "| layout | company cap | slow receivers | held at trigger | sync start delay "
        "| healthy company's alert delay | load 1m |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, slow, cap in SCENARIOS[args.mode]:
        mine = [r for r in runs if r.layout == name and r.slow == slow and r.cap == cap]
        shown = f"{DEFAULT_CAP} (default)" if cap is None else str(cap) if cap else "none (0)"
        lines.append(
            f"| {name} | {shown} | {args.slow if slow else 0} x {args.hold:g} s | "
            f"{', '.join(str(r.held_at_trigger) for r in mine)} | "
            f"{spread([r.sync_delay_s for r in mine if r.sync_delay_s is not None])} | "
            f"{spread([r.alert_delay_s for r in mine if r.alert_delay_s is not None])} | "
            f"{', '.join(f'{r.load:.2f}' for r in mine)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow", type=int, default=20, help="slow alert rules (at most 20)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds each slow answer takes")
    parser.add_argument("--json", action="store_true", help="print the raw runs as JSON")
    parser.add_argument(
        "--mode", choices=sorted(SCENARIOS), default="layouts", help="which scenarios to run"
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the workers and the private redis-server are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    os.environ.update(ENV)  # the rules are written here: loopback receivers allowed
    get_settings.cache_clear()
    workdir = Path(tempfile.mkdtemp(prefix="bench-alert-isolation-"))
    bench = Bench(workdir, args.slow, args.hold)
    runs: list[Run] = []
    failed = False
    try:
        for round_ in range(1, args.runs + 1):
            for name, slow, cap in SCENARIOS[args.mode]:
                try:
                    run = bench.run(name, slow, round_, cap)
                except (AssertionError, subprocess.SubprocessError) as exc:
                    print(f"{name} slow={slow} cap={cap} #{round_}: FAILED {exc}", flush=True)
                    failed = True
                    continue
                runs.append(run)
                print(
                    f"{name} slow={slow} cap={cap} #{round_}: sync {run.sync_delay_s} s, alert "
                    f"{run.alert_delay_s} s (held {run.held_at_trigger}, load {run.load:.2f})",
                    flush=True,
                )
    finally:
        bench.close()
    suffix = "" if args.mode == "layouts" else f"_{args.mode}"
    out = ROOT / "bench" / "results" / f"alert_isolation{suffix}.json"
    out.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    print()
    print(table(runs, args))
    if args.json:
        print(json.dumps([asdict(r) for r in runs], indent=2))
    if failed:
        sys.exit(1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
