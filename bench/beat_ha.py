"""Failover and idle cost of real beats: erp-sync (lease 3 s) and RedBeat at its defaults and
tuned to the same lease, on one private redis-server.

    .venv/bin/python -m bench.beat_ha [--rounds 3] [--companies 10000] [--seconds 20]

Failover: SIGKILL the leader of two (or more) real ``celery beat`` processes, time until the
schedule moves again (our index's ``slots`` counter; RedBeat's queue length, fed by a static
entry every 0.2 s). Idle cost: what a beat asks of Redis while nothing is due, counted by Redis
itself (``INFO commandstats`` deltas over a window), leader alone and leader plus one standby.
Also run by ``bench.beat`` (failover only). Results: stdout and bench/results/beat_ha.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.beat import beat_env, failover_ours, redbeat_app, redbeat_seed
from bench.common import ROOT, median, seed
from config.keys import KeySpace
from config.models import SyncSettings
from tests.support.procs import Proc, beat, wait_until
from tests.support.redisproc import RedisServer

# RedBeat as shipped: the lock lives 5 x max-interval. Tuned: our lease, polled every second.
REDBEAT: dict[str, dict[str, float | None]] = {
    "default": {"max_interval": 5.0, "lock_timeout": None},
    "tuned": {"max_interval": 1.0, "lock_timeout": 3.0},
}
# Only the payments sync, daily: at 10k companies about one slot every 9 s, so a window is idle.
DAILY_ONLY = SyncSettings(
    sync_project_job_costs=False, refresh_erp_companies_list=False, refresh_erp_job_list=False
)
OWN = ("info", "config|resetstat", "config")  # the bench's own commands, not the beat's


def redbeat_module(logs: Path, url: str, name: str, lock_timeout: float | None, tick: bool) -> str:
    """A tiny Celery app for ``celery -A <name> beat -S redbeat.RedBeatScheduler``."""
    conf = (
        f"broker_url={url!r}, redbeat_redis_url={url!r}, redbeat_key_prefix='rb:', "
        "broker_transport_options={'global_keyprefix': 'rbq:'}, task_ignore_result=True"
    )
    if lock_timeout is not None:
        conf += f", redbeat_lock_timeout={lock_timeout!r}"
    if tick:  # a static entry every 0.2 s: the queue grows while a leader runs
        conf += ", beat_schedule={'tick': {'task': 'x.tick', 'schedule': 0.2}}"
    (logs / f"{name}.py").write_text(
        f"from celery import Celery\napp = Celery('rb')\napp.conf.update({conf})\n"
    )
    return name


def redbeat_proc(logs: Path, module: str, name: str, max_interval: float) -> Proc:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        module,
        "beat",
        "-l",
        "INFO",
        "-S",
        "redbeat.RedBeatScheduler",
        "--max-interval",
        f"{max_interval:g}",
    ]
    return Proc(name, args, {"PYTHONPATH": str(logs)}, logs)


def failover_redbeat(url: str, logs: Path, config: str, rounds: int = 3) -> list[float]:
    """Seconds from SIGKILL of RedBeat's leader until its queue grows again, per round."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    redbeat_seed(redbeat_app(url), client, 0, 0)
    conf = REDBEAT[config]
    module = redbeat_module(logs, url, f"rbfo_{config}", conf["lock_timeout"], tick=True)
    procs = [
        redbeat_proc(logs, module, f"rbfo-{config}-{i}", conf["max_interval"] or 5)
        for i in range(2)
    ]
    gaps = []
    try:
        for r in range(rounds):
            wait_until(
                lambda: any(p.alive() and "Acquired lock" in p.output() for p in procs),
                90,
                "no RedBeat leader",
            )
            for p in procs:  # the standby is up (its own start must not cloud the gap)
                p.wait_for("beat: Starting", 30)
            time.sleep(2)
            leader = next(p for p in procs if p.alive() and "Acquired lock" in p.output())
            leader.kill_group()
            killed = time.monotonic()
            time.sleep(0.3)  # anything the dead leader sent is in the queue by now
            before = client.llen("rbq:celery")
            while client.llen("rbq:celery") == before and time.monotonic() - killed < 120:
                time.sleep(0.01)
            gaps.append(time.monotonic() - killed)
            if r < rounds - 1:
                procs.append(
                    redbeat_proc(
                        logs, module, f"rbfo-{config}-{len(procs)}", conf["max_interval"] or 5
                    )
                )
    finally:
        for p in procs:
            p.stop()
    client.close()
    return gaps


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in client.info("commandstats").items()
        if name.removeprefix("cmdstat_") not in OWN
    }


def window(client: redis.Redis, seconds: float) -> dict[str, int]:
    client.config_resetstat()
    time.sleep(seconds)
    return commandstats(client)


def idle_ours(url: str, logs: Path, n: int, seconds: float) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    keys = KeySpace("bench")
    seed(client, keys, n, DAILY_ONLY)
    procs = [beat("idle-ours-0", beat_env(url), logs)]
    out: dict[str, Any] = {}
    try:
        wait_until(lambda: client.get(keys.beat_cursor) is not None, 120, "no rebuild")
        time.sleep(3)
        for label in ("leader", "leader+standby"):
            slots0 = int(client.hget(keys.beat_stats, "slots") or 0)
            calls = window(client, seconds)
            slots = int(client.hget(keys.beat_stats, "slots") or 0) - slots0
            out[label] = summary(calls, seconds, ticks=calls.get("time", 0), dispatched=slots)
            if label == "leader":
                procs.append(beat("idle-ours-1", beat_env(url), logs))
                wait_until(lambda: client.hlen(keys.beat_nodes) >= 2, 60, "no standby")
                time.sleep(3)
    finally:
        for p in procs:
            p.stop()
    client.close()
    return out


def idle_redbeat(url: str, logs: Path, n: int, seconds: float, config: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    redbeat_seed(redbeat_app(url), client, n, first_due_in=7200)  # nothing due for 2 h
    conf = REDBEAT[config]
    interval = conf["max_interval"] or 5
    module = redbeat_module(logs, url, f"rbidle_{config}", conf["lock_timeout"], tick=False)
    procs = [redbeat_proc(logs, module, f"rbidle-{config}-0", interval)]
    out: dict[str, Any] = {}
    try:
        procs[0].wait_for("Acquired lock", 60)
        time.sleep(3)
        for label in ("leader", "leader+standby"):
            calls = window(client, seconds)
            out[label] = summary(calls, seconds, ticks=round(seconds / interval), dispatched=0)
            if label == "leader":
                procs.append(redbeat_proc(logs, module, f"rbidle-{config}-1", interval))
                procs[1].wait_for("beat: Starting", 60)
                time.sleep(3)
    finally:
        for p in procs:
            p.stop()
    client.close()
    return out


def summary(calls: dict[str, int], seconds: float, ticks: int, dispatched: int) -> dict[str, Any]:
    total = sum(calls.values())
    return {
        "per_s": total / seconds,
        "ticks": ticks,
        "per_tick": total / max(ticks, 1),
        "dispatched": dispatched,
        "by_command": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--companies", type=int, default=10_000, help="fleet for idle cost")
    parser.add_argument("--seconds", type=float, default=20, help="idle window")
    parser.add_argument("--only", default="failover,idle")
    args = parser.parse_args()
    only = set(args.only.split(","))
    results: dict[str, Any] = {"load": [load()]}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        server = RedisServer(logs / "redis", extra=["--appendonly", "no"]).start()
        try:
            if "failover" in only:
                results["failover_ours_s"] = failover_ours(server.url, logs, args.rounds)
                print("failover ours", results["failover_ours_s"], load(), flush=True)
                for config in REDBEAT:
                    gaps = failover_redbeat(server.url, logs, config, args.rounds)
                    results[f"failover_redbeat_{config}_s"] = gaps
                    print(f"failover redbeat {config}", gaps, load(), flush=True)
                results["load"].append(load())
            if "idle" in only:
                results["idle_ours"] = idle_ours(server.url, logs, args.companies, args.seconds)
                print("idle ours", json.dumps(results["idle_ours"]), load(), flush=True)
                for config in REDBEAT:
                    res = idle_redbeat(server.url, logs, args.companies, args.seconds, config)
                    results[f"idle_redbeat_{config}"] = res
                    print(f"idle redbeat {config}", json.dumps(res), load(), flush=True)
                results["load"].append(load())
        finally:
            server.stop()
    for key, value in results.items():
        if key.startswith("failover"):
            print(
                f"{key}: median {median(value):.2f} s, min {min(value):.2f}, max {max(value):.2f}"
            )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "beat_ha.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
