"""The schedule heals itself on real beats: lost, corrupt or deleted schedule state comes back
from the stored settings within one sweep, and nothing is dispatched twice meanwhile.

Two real ``celery beat`` processes on a real redis-server, a sweep pass of 2 s. Each disruption
is followed by ``erp-sync doctor``: it reports the differences (exit 1) until the sweep has
rebuilt them (exit 0). No worker runs, so every message beat queued stays in the queues, where
the test counts task ids: a slot dispatched twice would show the same id twice.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from erp_sync.beat.engine import pid_of
from erp_sync.beat.lease import holder_node
from erp_sync.control.store import SettingsStore
from tests.support import procs
from tests.support.erp import small_company
from tests.support.reads import zmembers
from tests.support.redisproc import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.processes]
COMPANIES = [f"c{n:02d}" for n in range(20)]
SWEEP = 2.0
HEALED_WITHIN = 30.0  # generous: one sweep pass is 2 s; only a sweep that never comes fails


def doctor(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "manage.py", "doctor", "--json"],
        cwd=procs.ROOT,
        env=procs.process_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def queued_ids(client: redis.Redis, keys: KeySpace) -> list[str]:
    return [
        json.loads(m)["headers"]["id"]
        for q in ("company", "project")
        for m in client.lrange(keys.queue(q), 0, -1)
    ]


def test_lost_corrupt_and_deleted_schedule_state_is_rebuilt_within_a_sweep(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    client, keys = redis_server.client(), KeySpace(prefix)
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECONDS_PER_HOUR": "4",
        "ERP_SYNC_BEAT_LEASE_SECONDS": "1",
        "ERP_SYNC_SWEEP_SECONDS": f"{SWEEP:g}",
    }
    store = SettingsStore(client, keys)
    for company in COMPANIES:
        small_company(client, keys, company, projects=("p1",))
        store.update_settings(company, "alice", {"payments_for_synced_invoices": "hourly"})
    beats = [procs.beat(f"beat{n}", env, tmp_path) for n in (1, 2)]

    took: dict[str, float] = {}

    def healed(what: str) -> None:
        started = time.monotonic()
        procs.wait_until(
            lambda: doctor(env)[0] == 0,
            HEALED_WITHIN,
            f"not rebuilt after {what}: {doctor(env)[1]}",
        )
        took[what] = round(time.monotonic() - started, 1)

    def dispatched() -> int:
        return int(client.hget(keys.beat_stats, "slots") or 0)

    try:
        healed("the first start")
        client.delete(keys.due)
        healed("deleting the due index")

        client.delete(keys.beat_applied)
        healed("deleting every applied record")

        client.hset(keys.beat_applied, "c03", "{not json")
        client.zadd(keys.due, {"c04:vendors": 12345.0})
        client.zadd(keys.due, {"c05:jobs": 1e12}, xx=True)
        healed("corrupting records and due times")

        floor = dispatched() + 20
        procs.wait_until(lambda: dispatched() >= floor, 30, "beat stopped dispatching")
        node = holder_node(client.get(keys.beat_leader))
        assert node is not None
        next(b for b in beats if b.pid == pid_of(node)).kill_group()
        rng = random.Random(10)
        members = zmembers(client, keys.due)
        client.zrem(keys.due, *rng.sample(members, 15))
        client.hdel(keys.beat_applied, *rng.sample(COMPANIES, 5))
        client.hdel(keys.beat_slots, *rng.sample(members, 5))
        healed("deleting random schedule keys during a failover")

        floor = dispatched() + 20
        procs.wait_until(lambda: dispatched() >= floor, 30, "the new leader is not dispatching")
        # Every company twice (due index, applied records), three corruptions, then the random ones.
        assert int(client.hget(keys.beat_stats, "repairs") or 0) > 2 * len(COMPANIES) + 3
    finally:
        for beat in beats:
            beat.signal(signal.SIGTERM)
        for beat in beats:
            beat.stop()
    ids = queued_ids(client, keys)
    # With no beat left to repair it, doctor sees exactly what is wrong (and says so, exit 1).
    client.delete(keys.due)
    code, report = doctor(env)
    differences = report["differences"]
    assert code == 1 and isinstance(differences, list)
    assert len(differences) >= 4 * len(COMPANIES)
    print(
        f"heal figures: sweep pass {SWEEP:g} s, {len(COMPANIES)} companies; seconds until "
        f"doctor was clean: {took}; repairs "
        f"{int(client.hget(keys.beat_stats, 'repairs') or 0)}; slots queued {len(ids)}, twice "
        f"{len(ids) - len(set(ids))}"
    )
    twice = [tid for tid, n in Counter(ids).items() if n > 1]
    assert not twice, f"dispatched twice: {twice[:5]}"
    survivor = next(b for b in beats if "schedule repair" in b.output())
    assert "rebuilt from settings" in survivor.output()
