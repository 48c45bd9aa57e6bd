"""Change storms, single changes and full rebuilds, applied by a real ``celery -A worker beat``.

``.venv/bin/python -m bench.beat_storm [--companies 100000] [--within 30] [--runs 3]``

A private redis-server as the compose file runs it; N companies with every sync on (payments
daily, no projects); a real beat at INFO (the compose file's level) builds their schedules and
then leads. Measured, each ``--runs`` times (median, min-max):

- *single change*: 100 ``SettingsStore.update_settings`` calls, one at a time, each timed from the
  committed write to beat's announcement that it applied that version (``settings set``'s
  ``applied_ms``), with no storm running;
- *storm*: every company's payments frequency changed within ``--within`` seconds by another
  process, written the way ``update_settings`` writes it (settings with the version bumped, an
  audit entry, a change on the stream; pipelined, not 100k optimistic transactions). Reported: how
  long after the first write the last change was applied, each change's lag (write -> applied,
  from the stream's ``entries-added`` and beat's ``applied`` counter sampled every 10 ms), and the
  regular schedule's lateness meanwhile (age of the oldest overdue due entry, sampled every 20 ms);
- *backlog*: the same N changes written while no beat runs, then a beat started: changes applied
  per second from its first applied change to its last (beat's apply capacity);
- *rebuild*: beat's change cursor deleted and a beat started, so it rebuilds every company (as
  after a trimmed change stream) while 2,000 entries fall due during the rebuild: rebuild seconds
  (beat's own log line) and the lateness of the dispatches meanwhile.

The change stream's cap is raised to 1M for the writer so the backlog phase is never trimmed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import redis

from bench.beat_real import (
    Lateness,
    build,
    env_for,
    load,
    med,
    now,
    rebuilt,
    restart_rebuilding,
    server,
    settings_writes,
    start_beat,
    stat,
    stop,
)
from bench.common import pct, seed
from config.keys import KeySpace
from config.models import PaymentsFrequency, SyncSettings
from erp_sync.control.store import SettingsStore
from erp_sync.schedule.applied import AppliedWaiter
from tests.support.procs import Proc, wait_until

MAXLEN = 1_000_000
FREQUENCIES = [
    PaymentsFrequency.HOURLY,
    PaymentsFrequency.EVERY_4_HOURS,
    PaymentsFrequency.EVERY_2_HOURS,
    PaymentsFrequency.DAILY,
]


def single_changes(client: redis.Redis, keys: KeySpace, samples: int = 100) -> list[float]:
    store = SettingsStore(client, keys)
    out = []
    for i in range(samples):
        cid = f"c{i}"
        waiter = AppliedWaiter(client, keys, cid)
        stored, _ = store.update_settings(
            cid, "admin", lambda s: {"refresh_erp_job_list": not s.refresh_erp_job_list}
        )
        ms = waiter.wait(stored.version, 10, time.monotonic())
        out.append(ms if ms is not None else float("inf"))
    return out


def _writer(url: str, prefix: str, n: int, frequency: str, version: int, within: float) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    started = time.monotonic()

    def pace(done: int) -> None:  # spread the writes evenly over ``within`` seconds
        due = started + within * done / n
        if due > time.monotonic():
            time.sleep(due - time.monotonic())

    settings_writes(
        client,
        KeySpace(prefix),
        (f"c{i}" for i in range(n)),
        PaymentsFrequency(frequency),
        version,
        MAXLEN,
        pace=pace if within > 0 else None,
    )


def write_storm(
    url: str, keys: KeySpace, n: int, frequency: PaymentsFrequency, version: int, within: float
) -> BaseProcess:
    proc = multiprocessing.get_context("fork").Process(
        target=_writer, args=(url, keys.prefix, n, frequency.value, version, within)
    )
    proc.start()
    return proc


def added(client: redis.Redis, keys: KeySpace) -> int:
    try:
        return int(client.xinfo_stream(keys.changes)["entries-added"])
    except redis.ResponseError:
        return 0


def storm(
    client: redis.Redis, url: str, keys: KeySpace, n: int, within: float, run: int
) -> dict[str, float]:
    """One paced storm against the running leader."""
    samples: list[tuple[float, int, int]] = []  # (redis time, entries added, applied)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pipe = client.pipeline(transaction=False)
            pipe.time()
            pipe.xinfo_stream(keys.changes)
            pipe.hget(keys.beat_stats, "applied")
            (s, us), info, applied = pipe.execute()
            samples.append((s + us / 1e6, int(info["entries-added"]), int(applied or 0)))
            done.wait(0.01)

    e0, a0 = added(client, keys), stat(client, keys, "applied")
    sampler = threading.Thread(target=sample, daemon=True)
    with Lateness(client, keys) as late:
        sampler.start()
        t0 = now(client)
        writer = write_storm(url, keys, n, FREQUENCIES[run % 3], 1000 + run, within)
        writer.join()
        t_written = now(client)
        wait_until(
            lambda: stat(client, keys, "applied") - a0 >= n,
            600,
            "beat never applied the storm",
            interval=0.01,
        )
        t_applied = now(client)
        done.set()
        sampler.join()
    lags = []
    step = max(1, n // 2000)  # the lag of every step-th change
    wi = ai = 0
    for k in range(1, n + 1, step):
        while samples[wi][1] - e0 < k:
            wi += 1
        while ai < len(samples) and samples[ai][2] - a0 < k:
            ai += 1
        t_app = samples[ai][0] if ai < len(samples) else t_applied
        lags.append(t_app - samples[wi][0])
    return {
        "write_s": t_written - t0,
        "applied_after_s": t_applied - t0,
        "rate": n / (t_applied - t0),
        "lag_p99_s": pct(lags, 99),
        "lag_max_s": max(lags),
        "lateness_max_s": late.max,
    }


def backlog(
    client: redis.Redis, url: str, keys: KeySpace, env: dict[str, str], logs: Path, n: int, run: int
) -> tuple[float, Proc]:
    """N changes written while no beat runs; a beat started: its apply rate."""
    writer = write_storm(url, keys, n, FREQUENCIES[(run + 1) % 3], 2000 + run, 0)
    writer.join()
    a0 = stat(client, keys, "applied")
    proc = start_beat("backlog", env, logs)
    wait_until(
        lambda: stat(client, keys, "applied") > a0,
        120,
        f"beat never applied:\n{proc.output()[-2000:]}",
        interval=0.005,
    )
    t0, first = time.monotonic(), stat(client, keys, "applied")
    wait_until(
        lambda: stat(client, keys, "applied") - a0 >= n,
        600,
        "beat never applied the backlog",
        interval=0.005,
    )
    return (n - (first - a0)) / (time.monotonic() - t0), proc


def rebuild(
    client: redis.Redis, keys: KeySpace, env: dict[str, str], logs: Path, n: int
) -> tuple[float, float, int, Proc]:
    """Rebuild every company while entries fall due: (seconds, max lateness, slots sent)."""
    proc = restart_rebuilding(client, keys, env, logs)
    t = now(client)
    picks = random.sample(range(n), min(n, 2000))
    span = max(2.0, n / 20_000)  # the target rebuild time
    client.zadd(
        keys.due,
        {f"c{c}:vendors": t + 0.5 + span * k / len(picks) for k, c in enumerate(picks)},
        xx=True,
    )
    s0 = stat(client, keys, "slots")
    time.sleep(0.5)  # what fell due while no beat ran is sent by its first steps
    with Lateness(client, keys) as late:
        seconds = rebuilt(proc)
    return seconds, late.max, stat(client, keys, "slots") - s0, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--companies", type=int, default=100_000)
    parser.add_argument("--within", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="single,storm,backlog,rebuild")
    args = parser.parse_args()
    only = set(args.only.split(","))
    n = args.companies
    workdir = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    srv = server(workdir)
    client = srv.client()
    keys = KeySpace("storm")
    env = env_for(srv.url, keys)
    print(f"{n:,} companies; load average at start {load()}; logs in {workdir}", flush=True)
    results: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        print(f"  {name}: {value:,.3f}  (load {load()})", flush=True)

    proc: Proc | None = None
    try:
        seed(client, keys, n, SyncSettings())
        store = SettingsStore(client, keys)
        for i in range(100):
            store.grant(f"c{i}", "admin", "admin")
        note("first_build_s", build(client, keys, env, workdir, n))
        proc = start_beat("leader", env, workdir)
        wait_until(lambda: client.exists(keys.beat_cursor), 120, "no leader")
        for run in range(args.runs):
            if "single" in only:
                idle = single_changes(client, keys)
                note("single_p50_ms", pct(idle, 50))
                note("single_p99_ms", pct(idle, 99))
            if "storm" in only:
                for name, value in storm(client, srv.url, keys, n, args.within, run).items():
                    note(f"storm_{name}", value)
            if "backlog" in only:
                stop(proc)
                rate, proc = backlog(client, srv.url, keys, env, workdir, n, run)
                note("backlog_rate", rate)
            if "rebuild" in only:
                stop(proc)
                seconds, lateness, sent, proc = rebuild(client, keys, env, workdir, n)
                note("rebuild_s", seconds)
                note("rebuild_rate", n / seconds)
                note("rebuild_lateness_max_s", lateness)
                note("rebuild_slots_sent", sent)
        print(
            f"\n{n:,} companies, real `celery -A worker beat -l INFO`, median (min-max) of "
            f"{args.runs} runs; load average at end {load()}\n"
        )
        print("| figure | value |\n|---|---|")
        for name, values in results.items():
            print(f"| {name} | {med(values)} |")
    finally:
        if proc is not None:
            stop(proc)
        srv.close_clients()
        srv.kill()


if __name__ == "__main__":
    main()
