"""A real ``celery -A worker beat`` draining a burst of due entries, at the log level it runs at.

``.venv/bin/python -m bench.beat_burst [--companies 10000] [--projects 0] [--runs 3]
[--levels INFO,WARNING]`` starts a private redis-server as the compose file runs it (AOF,
``everysec``), seeds N companies (vendors only: one task per entry; with ``--projects P``, job
costs only: P tasks per entry), lets a real beat build their schedules, stops it, moves every
entry to its current slot (a valid slot, due now), then starts a fresh real beat at each log
level and times the drain: from the first dispatched batch to the moment beat's counter reaches
every slot (``messages`` with projects), read from Redis every 10 ms. Then the engine in this
process (the deployed app, so ``task-sent`` events on; dispatch lines at INFO into a file) drains
the same burst: the engine's ceiling. Each is measured ``--runs`` times (median, min-max).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import redis

from bench.common import ONLY_JOB_COSTS, ONLY_VENDORS, seed
from config.keys import KeySpace
from config.members import split_due_member
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.schedule.applied import parse_applied
from erp_sync.schedule.cadence import Cadence, slot_at_or_before
from tests.support.clock import Clock
from tests.support.procs import Proc, beat, wait_until
from tests.support.redisproc import RedisServer


def make_due(client: redis.Redis, keys: KeySpace) -> tuple[int, float]:
    """Move every due entry to its current slot (due now) and forget the last slots sent;
    the number of entries and the Redis time used."""
    now_s, now_us = client.time()
    now = now_s + now_us / 1e6
    members = [str(m) for m in client.zrange(keys.due, 0, -1)]
    applied = client.hgetall(keys.beat_applied)
    pipe = client.pipeline(transaction=False)
    for member in members:
        company, kind = split_due_member(member)
        record = parse_applied(applied[company])
        assert record is not None
        cadence = Cadence.from_key(record.cadences[kind.value])
        pipe.zadd(keys.due, {member: slot_at_or_before(cadence, company, kind, now)})
    pipe.delete(keys.beat_slots, keys.beat_stats, keys.queue("company"), keys.queue("project"))
    pipe.execute()
    return len(members), now


def drain(
    env: dict[str, str],
    level: str,
    logs: Path,
    client: redis.Redis,
    keys: KeySpace,
    counter: str,
    n: int,
) -> float:
    proc = beat(f"burst-{level}-{time.monotonic_ns()}", env, logs, extra=["-l", level])
    try:
        wait_until(
            lambda: int(client.hget(keys.beat_stats, counter) or 0) > 0,
            120,
            f"beat never dispatched:\n{proc.output()[-2000:]}",
            interval=0.005,
        )
        started = time.monotonic()
        first = int(client.hget(keys.beat_stats, counter) or 0)
        wait_until(
            lambda: int(client.hget(keys.beat_stats, counter) or 0) >= n,
            900,
            "beat never drained the burst",
            interval=0.01,
        )
        return (n - first) / (time.monotonic() - started)
    finally:
        proc.signal(signal.SIGTERM)
        proc.stop()


def drain_in_process(
    client: redis.Redis, keys: KeySpace, now: float, counter: str, logs: Path
) -> float:
    import worker  # the deployed app, imported only here (task-sent events on)

    gc.collect()
    gc.freeze()  # the bench's own heap (seeding) must not make the engine's collections slower

    handler = logging.FileHandler(logs / "inprocess.log")
    log = logging.getLogger("erp_sync.beat")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    engine = BeatEngine(
        worker.app,
        client,
        keys,
        EngineConfig(max_block=0.0),
        clock=Clock(now + 0.5),
        node="bench-inproc",
    )
    try:
        while engine.cursor is None:  # elected (its first step dispatches a batch or two)
            engine.step()
        before = int(client.hget(keys.beat_stats, counter) or 0)
        started = time.perf_counter()
        while engine.dispatch_due():
            pass
        sent = int(client.hget(keys.beat_stats, counter) or 0) - before
        return sent / (time.perf_counter() - started)
    finally:
        engine.close()
        log.removeHandler(handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--companies", type=int, default=10_000)
    parser.add_argument("--projects", type=int, default=0, help="projects per company")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--levels", default="INFO,WARNING")
    parser.add_argument("--inprocess-runs", type=int, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    server = RedisServer(workdir / "redis", extra=["--appendfsync", "everysec"]).start()
    client = server.client()
    keys = KeySpace("burst")
    env = {"ERP_SYNC_REDIS_URL": server.url, "ERP_SYNC_KEY_PREFIX": keys.prefix}
    counter = "messages" if args.projects else "slots"
    target = args.companies * max(1, args.projects)
    print(f"load average at start: {os.getloadavg()}; logs in {workdir}", flush=True)
    try:
        seed(
            client,
            keys,
            args.companies,
            ONLY_JOB_COSTS if args.projects else ONLY_VENDORS,
            projects=args.projects,
        )
        builder: Proc = beat("build", env, workdir)
        wait_until(
            lambda: int(client.zcard(keys.due)) >= args.companies,
            300,
            "the first beat never built the schedules",
        )
        builder.signal(signal.SIGTERM)
        builder.stop()
        rates: dict[str, list[float]] = {level: [] for level in args.levels.split(",") if level}
        for _ in range(args.runs):
            for level in rates:
                make_due(client, keys)
                rates[level].append(drain(env, level, workdir, client, keys, counter, target))
                print(f"  {level}: {rates[level][-1]:,.0f} /s (load {os.getloadavg()})", flush=True)
        inproc = []
        for _ in range(args.runs if args.inprocess_runs is None else args.inprocess_runs):
            _, now = make_due(client, keys)
            inproc.append(drain_in_process(client, keys, now, counter, workdir))
            print(f"  in-process: {inproc[-1]:,.0f} /s (load {os.getloadavg()})", flush=True)
        what = (
            f"{args.companies:,} companies x {args.projects} projects ({target:,} tasks)"
            if args.projects
            else f"{args.companies:,} due entries"
        )
        print(
            f"\n{what}, median (min-max) of {args.runs} runs; load average at end: "
            f"{os.getloadavg()}\n"
        )
        unit = "tasks/s" if args.projects else "dispatches/s"
        print(f"| process, log level | {unit} | seconds for {target:,} |\n|---|---|---|")
        for name, values in [
            *[(f"real beat, {lv}", v) for lv, v in rates.items()],
            ("in-process engine (ceiling)", inproc),
        ]:
            if values:
                med = statistics.median(values)
                print(
                    f"| {name} | {med:,.0f} ({min(values):,.0f}-{max(values):,.0f}) | "
                    f"{target / med:.1f} |"
                )
    finally:
        server.close_clients()
        server.kill()


if __name__ == "__main__":
    main()
