"""Beat benchmark: erp-sync's beat side by side with RedBeat on the same private redis-server.

    .venv/bin/pip install -e '.[bench]'   # celery-redbeat, bench only
    .venv/bin/python -m bench.beat [--sizes 1000,10000,100000] [--quick]

Each side runs in its own subprocess (so its RSS is its own) against one redis-server this script
starts on a free port. Reports are ratios against RedBeat measured in the same run. Results go to
stdout as a markdown table and to bench/results/beat.json.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import redis
from celery import Celery

from bench.common import (
    ONLY_JOB_COSTS,
    ONLY_VENDORS,
    ROOT,
    key_bytes,
    median,
    pct,
    rss_mib,
    seed,
)
from config.keys import KeySpace
from erp_sync.beat.engine import BeatEngine, EngineConfig, pid_of
from erp_sync.beat.lease import holder_node
from erp_sync.control.store import SettingsStore
from erp_sync.schedule.applied import AppliedWaiter
from tests.support.clock import Clock
from tests.support.procs import beat
from tests.support.redisproc import RedisServer

IDLE_REPS = 300


def drain(engine: BeatEngine) -> float:
    started = time.perf_counter()
    while engine.dispatch_due():
        pass
    return time.perf_counter() - started


def side_ours(n: int, url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    keys = KeySpace("bench")
    seed(client, keys, n, ONLY_VENDORS)
    t0 = time.time()
    clock = Clock(t0)
    engine = BeatEngine(
        Celery("bench"),
        client,
        keys,
        EngineConfig(log_dispatches=False, max_block=0.0),
        clock=clock,
        node="bench",
    )
    started = time.perf_counter()
    engine.step()
    bootstrap = time.perf_counter() - started
    assert client.zcard(keys.due) == n
    mem = key_bytes(client, keys.due, keys.beat_applied) / n
    idle = []
    for _ in range(IDLE_REPS):
        s = time.perf_counter()
        engine.apply_changes()
        engine.dispatch_due()
        idle.append(time.perf_counter() - s)
    clock.t = t0 + 60
    before = int(client.hget(keys.beat_stats, "slots") or 0)
    tick_due = drain(engine)
    due_n = int(client.hget(keys.beat_stats, "slots") or 0) - before
    client.delete(keys.queue("company"))
    clock.t = t0 + 3600 + 61  # every entry is due (again)
    before = int(client.hget(keys.beat_stats, "slots") or 0)
    burst = drain(engine)
    burst_n = int(client.hget(keys.beat_stats, "slots") or 0) - before
    assert client.llen(keys.queue("company")) == burst_n
    engine.close()
    return {
        "bootstrap_s": bootstrap,
        "bytes_per_entry": mem,
        "idle_tick_ms": median(idle) * 1e3,
        "tick_due_ms": tick_due * 1e3,
        "tick_due_n": due_n,
        "burst_n": burst_n,
        "burst_rate": burst_n / burst,
        "rss_mib": rss_mib(),
    }


def redbeat_app(url: str, max_interval: float = 5) -> Celery:
    app = Celery("rb")
    app.conf.update(
        broker_url=url,
        redbeat_redis_url=url,
        redbeat_key_prefix="rb:",
        broker_transport_options={"global_keyprefix": "rbq:"},
        beat_max_loop_interval=max_interval,
        task_ignore_result=True,
        beat_scheduler="redbeat.RedBeatScheduler",
    )
    return app


def redbeat_seed(app: Celery, client: redis.Redis, n: int, first_due_in: float) -> None:
    """n hourly entries, due at now + first_due_in + i/n hours (i = 0..n-1)."""
    from celery.schedules import schedule as every
    from redbeat.decoder import RedBeatJSONEncoder

    now = time.time()
    sched = every(3600, app=app)
    for start in range(0, n, 5000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 5000)):
            due = now + first_due_in + i / n * 3600
            last = app.now().fromtimestamp(due - 3600, tz=app.timezone)
            key = f"rb:c{i}"
            definition = {
                "name": f"c{i}",
                "task": "tasks.company.refresh_vendors",
                "args": [],
                "kwargs": {"company": f"c{i}"},
                "options": {},
                "schedule": sched,
                "enabled": True,
            }
            pipe.hset(key, "definition", json.dumps(definition, cls=RedBeatJSONEncoder))
            pipe.hset(key, "meta", json.dumps({"last_run_at": last}, cls=RedBeatJSONEncoder))
            pipe.zadd("rb::schedule", {key: due})
        pipe.execute()


def side_redbeat(n: int, url: str) -> dict[str, Any]:
    from redbeat.schedulers import RedBeatScheduler, acquire_distributed_beat_lock

    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    app = redbeat_app(url)
    started = time.perf_counter()
    redbeat_seed(app, client, n, first_due_in=60)
    create = time.perf_counter() - started
    sched = RedBeatScheduler(app)
    acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=sched))
    mem = (
        sum(
            int(client.memory_usage(k, samples=0) or 0)
            for k in client.scan_iter("rb:*", count=5000)
        )
        / n
    )
    idle = []
    for _ in range(IDLE_REPS // 3):
        s = time.perf_counter()
        sched.tick()
        idle.append(time.perf_counter() - s)
    client.flushall()
    redbeat_seed(app, client, n, first_due_in=-60)  # the first n/60 entries are due
    sched = RedBeatScheduler(app)
    acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=sched))
    s = time.perf_counter()
    sched.tick()
    tick_due = time.perf_counter() - s
    due_n = client.llen("rbq:celery")
    out = {
        "create_s": create,
        "bytes_per_entry": mem,
        "idle_tick_ms": median(idle) * 1e3,
        "tick_due_ms": tick_due * 1e3,
        "tick_due_n": due_n,
    }
    if n <= 10_000:
        client.flushall()
        redbeat_seed(app, client, n, first_due_in=-3601)  # all due
        sched = RedBeatScheduler(app)
        acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=sched))
        s = time.perf_counter()
        while client.llen("rbq:celery") < n and time.perf_counter() - s < 120:
            sched.tick()
        out.update(
            burst_n=client.llen("rbq:celery"),
            burst_rate=client.llen("rbq:celery") / (time.perf_counter() - s),
        )
    out["rss_mib"] = rss_mib()
    return out


def side_projects(companies: int, projects: int, url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    keys = KeySpace("bench")
    seed(client, keys, companies, ONLY_JOB_COSTS, projects=projects)
    t0 = time.time()
    clock = Clock(t0)
    engine = BeatEngine(
        Celery("bench"),
        client,
        keys,
        EngineConfig(log_dispatches=False, max_block=0.0),
        clock=clock,
        node="bench",
    )
    engine.step()
    state = key_bytes(client, keys.due, keys.beat_applied)
    used_before = int(client.info("memory")["used_memory"])
    clock.t = t0 + 7200 + 1
    took = drain(engine)
    messages = int(client.hget(keys.beat_stats, "messages") or 0)
    queued = int(client.llen(keys.queue("project")))
    used_after = int(client.info("memory")["used_memory"])
    engine.close()
    return {
        "projects": companies * projects,
        "enqueued": queued,
        "messages": messages,
        "seconds": took,
        "rate": queued / took,
        "state_bytes_per_project": state / (companies * projects),
        "queue_bytes_per_message": (used_after - used_before) / max(queued, 1),
        "rss_mib": rss_mib(),
    }


def run_side(kind: str, url: str, *args: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.beat", "side", kind, url, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} side failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- scenarios with real beat processes ------------------------------------------------------


def beat_env(url: str, **extra: str) -> dict[str, str]:
    return {"ERP_SYNC_REDIS_URL": url, "ERP_SYNC_KEY_PREFIX": "bench", **extra}


def change_latency(url: str, n: int, logs: Path, samples: int = 200) -> dict[str, float]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    keys = KeySpace("bench")
    seed(client, keys, n, ONLY_VENDORS)
    store = SettingsStore(client, keys)
    for i in range(samples):
        store.grant(f"c{i}", "admin", "admin")
    proc = beat("bench-beat", beat_env(url), logs, extra=["-l", "WARNING"])
    try:
        deadline = time.time() + 300
        while client.hlen(keys.beat_applied) < n and time.time() < deadline:
            time.sleep(0.2)
        idle = _changes(client, keys, store, range(samples))
        # a burst: 10k (or all) entries due at once, changes made while it is dispatched
        burst_n = min(n, 10_000)
        members = [f"c{i}:vendors" for i in range(burst_n)]
        client.zadd(keys.due, dict.fromkeys(members, time.time() + 0.3), xx=True)
        time.sleep(0.3)
        before = int(client.hget(keys.beat_stats, "slots") or 0)
        during = _changes(
            client,
            keys,
            store,
            range(samples // 4),
            until=lambda: int(client.hget(keys.beat_stats, "slots") or 0) - before >= burst_n,
        )
    finally:
        proc.stop()
    return {
        "p50": median(idle),
        "p99": pct(idle, 99),
        "burst_p50": median(during),
        "burst_p99": pct(during, 99),
        "burst_samples": len(during),
    }


def _changes(
    client: redis.Redis, keys: KeySpace, store: SettingsStore, companies: range, until: Any = None
) -> list[float]:
    out = []
    for i in companies:
        if until is not None and until():
            break
        waiter = AppliedWaiter(client, keys, f"c{i}")
        stored, _ = store.update_settings(
            f"c{i}", "admin", lambda s: {"refresh_erp_job_list": not s.refresh_erp_job_list}
        )
        ms = waiter.wait(stored.version, 10, time.monotonic())
        out.append(ms if ms is not None else float("inf"))
    return out


def failover_ours(url: str, logs: Path, rounds: int = 3) -> list[float]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    keys = KeySpace("bench")
    seed(client, keys, 2000, ONLY_VENDORS)
    env = beat_env(url, ERP_SYNC_SECONDS_PER_HOUR="10")  # ~200 slots/s: something always due
    procs = [beat(f"fo{i}", env, logs, extra=["-l", "WARNING"]) for i in range(rounds + 1)]
    gaps = []
    try:
        for _ in range(rounds):
            while holder_node(client.get(keys.beat_leader)) is None:
                time.sleep(0.05)
            time.sleep(2)
            node = holder_node(client.get(keys.beat_leader))
            assert node is not None
            pid = pid_of(node)
            victim = next(p for p in procs if p.pid == pid)
            before = int(client.hget(keys.beat_stats, "slots") or 0)
            killed = time.monotonic()
            victim.kill_group()
            time.sleep(0.05)  # the dead leader's last in-flight script, if any, lands first
            before = max(before, int(client.hget(keys.beat_stats, "slots") or 0))
            while int(client.hget(keys.beat_stats, "slots") or 0) == before:
                time.sleep(0.005)
            gaps.append(time.monotonic() - killed)
    finally:
        for p in procs:
            p.stop()
    return gaps


def redbeat_change_latency(url: str, samples: int = 12) -> list[float]:
    """RedBeat has no change notification: a new/changed entry waits for the next tick."""
    from redbeat.schedulers import (
        RedBeatScheduler,
        RedBeatSchedulerEntry,
        acquire_distributed_beat_lock,
    )

    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    app = redbeat_app(url, max_interval=5)
    redbeat_seed(app, client, 1000, first_due_in=60)
    sched = RedBeatScheduler(app)
    stop = threading.Event()

    def loop() -> None:
        # redis-py locks are thread-local: take it in the thread that ticks, as beat does
        acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=sched))
        while not stop.is_set():
            stop.wait(sched.tick())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    out = []
    from celery.schedules import schedule as every

    rng = random.Random(7)
    for i in range(samples):
        time.sleep(rng.uniform(0.5, 5.5))  # land anywhere in RedBeat's tick cycle
        before = client.llen("rbq:celery")
        started = time.monotonic()
        # a change that makes an entry due now (its last run an hour ago), as an admin's would
        RedBeatSchedulerEntry(
            f"new{i}",
            "tasks.company.refresh_vendors",
            every(3600),
            app=app,
            last_run_at=app.now() - timedelta(seconds=3601),
        ).save()
        while client.llen("rbq:celery") == before and time.monotonic() - started < 30:
            time.sleep(0.005)
        out.append((time.monotonic() - started) * 1000)
    stop.set()
    thread.join(10)
    return out


def failovers(url: str, logs: Path, results: dict[str, Any], rounds: int = 3) -> None:
    """Ours (lease 3 s) and RedBeat at its defaults and tuned to our lease, ``rounds`` kills
    each (bench/beat_ha.py; it also measures what each costs Redis while idle)."""
    from bench.beat_ha import REDBEAT, failover_redbeat

    results["failover_ours_s"] = failover_ours(url, logs, rounds)
    print(f"failover ours: {results['failover_ours_s']}", flush=True)
    save(results)
    for config in REDBEAT:
        results[f"failover_redbeat_{config}_s"] = failover_redbeat(url, logs, config, rounds)
        print(f"failover redbeat {config}: {results[f'failover_redbeat_{config}_s']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--projects", default="10000x100", help="companies x projects")
    parser.add_argument("--quick", action="store_true", help="1k/10k only, no 1M, no failover")
    parser.add_argument("--only-failover", action="store_true", help="just the failover gaps")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if not args.quick else [1000, 10_000]
    results: dict[str, Any] = {"sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", extra=["--appendonly", "no"]).start()
        try:
            if args.only_failover:
                failovers(server.url, Path(tmp), results)
                print(json.dumps(results))
                return
            for n in sizes:
                results["sizes"][n] = {
                    "ours": run_side("ours", server.url, n),
                    "redbeat": run_side("redbeat", server.url, n),
                }
                print(f"N={n}: {json.dumps(results['sizes'][n])}", flush=True)
            for n in sizes:
                results["sizes"][n]["latency"] = change_latency(server.url, n, Path(tmp))
                print(f"latency N={n}: {results['sizes'][n]['latency']}", flush=True)
            results["redbeat_change_ms"] = redbeat_change_latency(server.url)
            print(f"redbeat change: {results['redbeat_change_ms']}", flush=True)
            if not args.quick:
                c, p = (int(x) for x in args.projects.split("x"))
                results["projects"] = run_side("projects", server.url, c, p)
                print(f"projects: {results['projects']}", flush=True)
                failovers(server.url, Path(tmp), results)
        finally:
            server.stop()
    save(results)
    print(json.dumps(results, indent=2, default=str))


def save(results: dict[str, Any]) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "beat.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "side":
        kind, url, *nums = sys.argv[2:]
        sides: dict[str, Callable[..., dict[str, Any]]] = {
            "ours": side_ours,
            "redbeat": side_redbeat,
            "projects": side_projects,
        }
        fn = sides[kind]
        print(json.dumps(fn(*map(int, nums), url)))
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        main()
