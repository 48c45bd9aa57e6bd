"""A real ``celery -A worker beat`` draining a burst of due entries, at the log level it runs at.

``.venv/bin/python -m bench.beat_burst [--companies 10000] [--runs 3] [--levels INFO,WARNING]``
starts a private redis-server, seeds N companies (vendors only: one task per entry), lets a real
beat build their schedules, stops it, moves every entry to its current slot (a valid slot, due
now), then starts a fresh real beat at each log level and times the drain: from the first
dispatched batch to the moment beat's ``slots`` counter reaches N (read from Redis every 10 ms).
The in-process engine's figure for the same burst (``bench/beat.py``, logging off) is its
ceiling. Each level is measured ``--runs`` times; the table gives the median and the spread.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import redis

from bench.common import ONLY_VENDORS, seed
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.beat.plan import split_member
from erp_sync.schedule import Cadence, slot_at_or_before
from tests.support.procs import Proc, beat, wait_until
from tests.support.redisproc import RedisServer

HOUR = 3600.0


def make_due(client: redis.Redis, keys: KeySpace) -> int:
    """Move every due entry to its current slot (due now) and forget the last slots sent."""
    now_s, now_us = client.time()
    now = now_s + now_us / 1e6
    members = [str(m) for m in client.zrange(keys.due, 0, -1)]
    pipe = client.pipeline(transaction=False)
    for member in members:
        company, kind = split_member(member)
        assert kind is SyncKind.VENDORS
        pipe.zadd(keys.due, {member: slot_at_or_before(Cadence(HOUR), company, kind, now)})
    pipe.delete(keys.beat_slots, keys.beat_stats, keys.queue("company"))
    pipe.execute()
    return len(members)


def drain(env: dict[str, str], level: str, logs: Path, client: redis.Redis, keys: KeySpace,
          n: int) -> float:
    proc = beat(f"burst-{level}-{time.monotonic_ns()}", env, logs, extra=["-l", level])
    try:
        wait_until(lambda: int(client.hget(keys.beat_stats, "slots") or 0) > 0, 60,
                   f"beat never dispatched:\n{proc.output()[-2000:]}")
        started = time.monotonic()
        wait_until(lambda: int(client.hget(keys.beat_stats, "slots") or 0) >= n, 300,
                   "beat never drained the burst", interval=0.01)
        return n / (time.monotonic() - started)
    finally:
        proc.signal(signal.SIGTERM)
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--companies", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--levels", default="INFO,WARNING")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    server = RedisServer(workdir / "redis", extra=["--appendfsync", "everysec"]).start()
    client = server.client()
    keys = KeySpace("burst")
    env = {"ERP_SYNC_REDIS_URL": server.url, "ERP_SYNC_KEY_PREFIX": keys.prefix}
    print(f"load average at start: {os.getloadavg()}")
    try:
        seed(client, keys, args.companies, ONLY_VENDORS)
        builder: Proc = beat("build", env, workdir)
        wait_until(lambda: int(client.zcard(keys.due)) >= args.companies, 300,
                   "the first beat never built the schedules")
        builder.signal(signal.SIGTERM)
        builder.stop()
        rates: dict[str, list[float]] = {level: [] for level in args.levels.split(",")}
        for _ in range(args.runs):
            for level in rates:
                n = make_due(client, keys)
                rates[level].append(drain(env, level, workdir, client, keys, n))
                print(f"  {level}: {rates[level][-1]:,.0f} dispatches/s", flush=True)
        print(f"\n{args.companies:,} due entries, real `celery -A worker beat`, median (min-max) "
              f"of {args.runs} runs; load average at end: {os.getloadavg()}\n")
        print("| log level | dispatches/s |\n|---|---|")
        for level, values in rates.items():
            print(f"| {level} | {statistics.median(values):,.0f} "
                  f"({min(values):,.0f}-{max(values):,.0f}) |")
    finally:
        server.close_clients()
        server.kill()


if __name__ == "__main__":
    main()
