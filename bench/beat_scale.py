"""Beat's costs by fleet size: idle tick, single-change latency, full rebuild, Redis bytes.

``.venv/bin/python -m bench.beat_scale [--sizes 1000,10000,100000,300000] [--runs 3]``

For each size: a private redis-server as the compose file runs it, N companies with every sync
on (payments daily, no projects), a real beat at INFO builds their schedules (first start), then:

- *change p99*: 100 ``update_settings`` calls one at a time, each timed from the committed write
  to the real beat's announcement that it applied it (``applied_ms``), per run;
- *rebuild*: beat's change cursor deleted and a real beat started, which rebuilds every company
  (beat's own log line), per run; beside it the in-process engine's ``resync()`` (its ceiling);
- *idle tick*: the in-process engine's ``step()`` with nothing due (one round trip: Redis time,
  the change feed after the cursor, the next due time), median of 300;
- *bytes*: ``MEMORY USAGE`` of beat's keys (due index, applied records, last slots) over N, after
  the runs; and of each company's own keys (record, settings, audit) as seeded, sampled.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import redis

from bench.beat_real import (
    build,
    env_for,
    load,
    med,
    rebuilt,
    restart_rebuilding,
    server,
    start_beat,
    stop,
)
from bench.beat_storm import single_changes
from bench.common import pct, seed
from config.keys import KeySpace
from config.models import SyncSettings
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.control.store import SettingsStore
from tests.support.clock import Clock
from tests.support.procs import wait_until


def in_process(client: redis.Redis, keys: KeySpace) -> tuple[float, float]:
    """(idle step ms, resync seconds) of the engine in this process, on the built schedule."""
    import worker  # the deployed app (task-sent events on), imported only when measuring

    first = client.zrange(keys.due, 0, 0, withscores=True)
    clock = Clock(float(first[0][1]) - 0.5)  # nothing is due
    engine = BeatEngine(
        worker.app,
        client,
        keys,
        EngineConfig(max_block=0.0, sweep_seconds=1e9),
        clock=clock,
        node="bench-inproc",
    )
    try:
        while engine.cursor is None:  # elected, cursor read
            engine.step()
        idle = []
        for _ in range(300):
            started = time.perf_counter()
            engine.step()
            idle.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.resync()
        return statistics.median(idle) * 1e3, time.perf_counter() - started
    finally:
        engine.close()


def one_size(n: int, runs: int) -> dict[str, list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    srv = server(workdir)
    client = srv.client()
    keys = KeySpace("scale")
    env = env_for(srv.url, keys)
    out: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        out.setdefault(name, []).append(value)
        print(f"  {n:,} {name}: {value:,.3f}  (load {load()})", flush=True)

    try:
        seed(client, keys, n, SyncSettings())
        store = SettingsStore(client, keys)
        for i in range(100):
            store.grant(f"c{i}", "admin", "admin")
        sample = [f"c{i}" for i in range(0, n, max(1, n // 100))]
        own = sum(
            int(client.memory_usage(k, samples=0) or 0)
            for c in sample
            for k in (keys.company(c), keys.settings(c), keys.audit(c))
        ) / len(sample)
        note("first_build_s", build(client, keys, env, workdir, n))
        proc = start_beat("leader", env, workdir)
        try:
            wait_until(lambda: client.exists(keys.beat_cursor), 120, "no leader")
            for _ in range(runs):
                note("change_p99_ms", pct(single_changes(client, keys), 99))
                stop(proc)
                proc = restart_rebuilding(client, keys, env, workdir)
                note("rebuild_s", rebuilt(proc))
                note("rebuild_rate", n / out["rebuild_s"][-1])
        finally:
            stop(proc)
        idle_ms, resync_s = in_process(client, keys)
        note("idle_step_ms_inproc", idle_ms)
        note("rebuild_rate_inproc", n / resync_s)
        beat_bytes = sum(
            int(client.memory_usage(k, samples=0) or 0)
            for k in (keys.due, keys.beat_applied, keys.beat_slots)
        )
        note("beat_bytes_per_company", beat_bytes / n)
        note("own_bytes_per_company", own)
        return out
    finally:
        srv.close_clients()
        srv.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--sizes", default="1000,10000,100000,300000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"load average at start {load()}", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {n: one_size(n, args.runs) for n in sizes}
    print(
        f"\nreal `celery -A worker beat -l INFO` unless marked in-process; median (min-max) "
        f"of {args.runs} runs; load average at end {load()}\n"
    )
    names = list(next(iter(results.values())))
    print("| figure | " + " | ".join(f"{n:,}" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in names:
        print(f"| {name} | " + " | ".join(med(results[n].get(name, [])) for n in sizes) + " |")


if __name__ == "__main__":
    main()
