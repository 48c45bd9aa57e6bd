"""What the replica acknowledgement (``WAIT``) costs an admin change.

Two set-ups on loopback, measured in the same run: a lone ``redis-server`` (no replica: the
store waits for nothing) and a primary with one replica (every change waits for its ``WAIT``).
For each, ``--runs`` runs of ``--changes`` settings changes, timed two ways:

- ``store``: ``SettingsStore.update_settings`` in this process (the transaction, the replica
  count, the ``WAIT``): the cost itself, without a process start;
- ``cli``: ``python manage.py settings set COMPANY --as USER --no-wait`` as a subprocess, what an
  admin waits for (Python's start-up dominates).

Prints, per set-up and way, the median per change of each run, then the median of the runs and
their spread (min-max), and the replica's cost as a difference against the lone Redis.

    .venv/bin/python -m bench.wait_cost [--runs 5] [--changes 200] [--cli-changes 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT
from config.keys import KeySpace
from erp_sync.control.replicas import ReplicaAck
from erp_sync.control.store import SettingsStore
from tests.support.procs import process_env
from tests.support.redisproc import RedisServer
from tests.support.replicas import ReplicaSet

PREFIX = "bench_wait"
DEPLOYED = ["--appendfsync", "everysec"]  # as the compose file runs it


def jobs_on(server: RedisServer) -> bool:
    """The company's jobs sync setting now: each timed change flips it (a real change)."""
    client = server.client()
    return (
        SettingsStore(client, KeySpace(PREFIX)).sync_settings("acme").settings.refresh_erp_job_list
    )


def store_run(server: RedisServer, changes: int) -> float:
    """Median milliseconds of one settings change through the store."""
    client = server.client()
    store = SettingsStore(client, KeySpace(PREFIX), ack=ReplicaAck(1, 1000))
    times = []
    for _ in range(changes):
        flip = not jobs_on(server)
        start = time.perf_counter()
        store.update_settings("acme", "al", {"refresh_erp_job_list": flip})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cli_run(server: RedisServer, changes: int, replicas: int = 1) -> float:
    """Median milliseconds of one ``settings set --no-wait`` subprocess."""
    env = process_env(
        {
            "ERP_SYNC_REDIS_URL": server.url,
            "ERP_SYNC_KEY_PREFIX": PREFIX,
            "ERP_SYNC_REDIS_WAIT_REPLICAS": str(replicas),
        }
    )
    times = []
    for _ in range(changes):
        flag = "--no-refresh-jobs" if jobs_on(server) else "--refresh-jobs"
        args = [sys.executable, "manage.py", "settings", "set", "acme", "--as", "al", flag]
        start = time.perf_counter()
        done = subprocess.run(
            [*args, "--no-wait"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        times.append((time.perf_counter() - start) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"settings set failed: {done.stderr.strip()}")
    return statistics.median(times)


def commands_per_change(server: RedisServer, replicas: int) -> tuple[int, int]:
    """Commands Redis ran for one ``settings set --no-wait`` (all of them, and WAITs)."""
    client = server.client()
    client.config_resetstat()
    cli_run(server, 1, replicas)
    stats = client.info("commandstats")
    ours = {k: v for k, v in stats.items() if k not in ("cmdstat_config", "cmdstat_replconf")}
    total = sum(int(v["calls"]) for v in ours.values())  # the replica's own REPLCONF left out
    return total, int(stats.get("cmdstat_wait", {}).get("calls", 0))


def summary(name: str, runs: list[float]) -> str:
    shown = ", ".join(f"{r:.3f}" for r in runs)
    return (
        f"{name}: median {statistics.median(runs):.3f} ms per change "
        f"(spread {min(runs):.3f}-{max(runs):.3f}; runs: {shown})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--cli-changes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lone = RedisServer(Path(tmp) / "lone", extra=DEPLOYED).start()
        pair = ReplicaSet.start(Path(tmp) / "pair", extra=DEPLOYED)
        setups = {"no replica": lone, "one replica": pair.primary}
        try:
            for server in setups.values():
                client = server.client()
                SettingsStore(client, KeySpace(PREFIX)).add_company("acme", "xero", admin="al")
            results: dict[str, dict[str, list[float]]] = {
                n: {"store": [], "cli": []} for n in setups
            }
            for _ in range(args.runs):  # interleaved, so load swings hit both set-ups
                for name, server in setups.items():
                    results[name]["store"].append(store_run(server, args.changes))
                    results[name]["cli"].append(cli_run(server, args.cli_changes))
            counts = {
                "lone, WAIT off (ERP_SYNC_REDIS_WAIT_REPLICAS=0)": commands_per_change(lone, 0),
                "lone, WAIT on (default 1)": commands_per_change(lone, 1),
                "one replica, WAIT on": commands_per_change(pair.primary, 1),
            }
        finally:
            lone.close_clients()
            lone.kill()
            pair.stop()
    print(
        f"wait_cost: {args.runs} runs, {args.changes} store changes and {args.cli_changes} "
        f"CLI changes per run and set-up; load {os.getloadavg()[0]:.2f}"
    )
    for way in ("store", "cli"):
        for name in setups:
            print(summary(f"{way:5} {name:11}", results[name][way]))
        diffs = [
            b - a
            for a, b in zip(results["no replica"][way], results["one replica"][way], strict=True)
        ]
        print(summary(f"{way:5} WAIT cost  ", diffs))
    for name, (total, waits) in counts.items():
        print(f"commands per settings set, {name}: {total} ({waits} WAIT)")


if __name__ == "__main__":
    main()
