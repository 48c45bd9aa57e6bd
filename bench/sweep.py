"""The self-healing sweep: what one slice costs, and whether a full pass fits its period.

``.venv/bin/python -m bench.sweep [--sizes 1000,10000,100000] [--runs 3]`` starts a private
redis-server, seeds N companies (all four syncs on), builds their schedules with the beat
engine, then runs the leader's ``Sweeper`` back to back over every company twice: once over a
healthy schedule (the steady state: read and check only) and once after deleting the due index
(every company rebuilt). It reports per pass the median slice time (a slice is 200 companies,
one pipelined read plus the check) with its spread over ``--runs`` runs, the companies checked
per second, and the share of one core a pass spread over ``ERP_SYNC_SWEEP_SECONDS`` (60 s)
costs the leader. The target: a full pass at 100k companies within 60 s, i.e. at least 1,667
companies checked per second with room to spare for dispatching.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import redis
from celery import Celery

from bench.common import seed
from config.keys import KeySpace
from config.models import SyncSettings
from erp_sync.beat.engine import BeatEngine, EngineConfig
from tests.support.clock import Clock
from tests.support.redisproc import RedisServer

PERIOD = 60.0


def one_pass(engine: BeatEngine) -> tuple[list[float], int]:
    """Slice times (s) of one full pass, run back to back, and the companies repaired."""
    sweeper = engine.sweeper
    token = engine.lease.token
    assert token is not None
    before = int(engine.client.hget(engine.keys.beat_stats, "repairs") or 0)
    slices: list[float] = []
    sweeper.start_pass()
    while not slices or sweeper.pass_running:  # back to back: the work, not the spacing
        started = time.perf_counter()
        assert sweeper.slice(token)
        slices.append(time.perf_counter() - started)
    repaired = int(engine.client.hget(engine.keys.beat_stats, "repairs") or 0) - before
    return slices, repaired


def run(url: str, n: int) -> dict[str, float]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    keys = KeySpace("bench")
    seed(client, keys, n, SyncSettings(payments_for_synced_invoices="hourly"))
    engine = BeatEngine(
        Celery("bench", set_as_current=False),
        client,
        keys,
        EngineConfig(log_dispatches=False, max_block=0.0),
        clock=Clock(time.time()),
        node="bench",
    )
    engine.step()  # leads and builds every schedule
    healthy, fixed_healthy = one_pass(engine)
    client.delete(keys.due)
    damaged, fixed = one_pass(engine)
    engine.close()
    client.close()
    assert fixed_healthy == 0 and fixed == n, (fixed_healthy, fixed)
    healthy_s, damaged_s = sum(healthy), sum(damaged)
    return {
        "companies": n,
        "slices": len(healthy),
        "healthy_slice_ms": statistics.median(healthy) * 1000,
        "healthy_pass_s": healthy_s,
        "healthy_per_s": n / healthy_s,
        "repair_slice_ms": statistics.median(damaged) * 1000,
        "repair_pass_s": damaged_s,
        "repair_per_s": n / damaged_s,
        "core_share_at_60s": healthy_s / PERIOD,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-sweep-"))).start()
    print(f"load average at start: {os.getloadavg()}")
    print(
        "| companies | slice ms (healthy) | pass s (healthy) | checked/s | slice ms (all "
        "rebuilt) | pass s (all rebuilt) | rebuilt/s | one core, pass over 60 s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    try:
        for n in sizes:
            runs = [run(server.url, n) for _ in range(args.runs)]

            def cell(name: str, fmt: str = "{:.1f}", runs: list[dict[str, float]] = runs) -> str:
                values = [r[name] for r in runs]
                return (
                    f"{fmt.format(statistics.median(values))} "
                    f"({fmt.format(min(values))}-{fmt.format(max(values))})"
                )

            print(
                f"| {n:,} | {cell('healthy_slice_ms')} | {cell('healthy_pass_s', '{:.2f}')} | "
                f"{cell('healthy_per_s', '{:,.0f}')} | {cell('repair_slice_ms')} | "
                f"{cell('repair_pass_s', '{:.2f}')} | {cell('repair_per_s', '{:,.0f}')} | "
                f"{cell('core_share_at_60s', '{:.1%}')} |",
                flush=True,
            )
    finally:
        server.close_clients()
        server.kill()
    print(f"load average at end: {os.getloadavg()}; median (min-max) of {args.runs} runs")


if __name__ == "__main__":
    main()
