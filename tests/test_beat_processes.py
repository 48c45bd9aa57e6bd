"""Real ``celery beat`` processes against a real redis-server: live changes, failover, fencing."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from erp_sync.applied import applied_version
from erp_sync.store import SettingsStore
from tests.support.procs import ROOT, Proc, beat, process_env, wait_until
from tests.support.redisproc import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.processes]


@pytest.fixture
def stack(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[dict[str, object]]:
    procs: list[Proc] = []
    settings = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix,
                "ERP_SYNC_SECONDS_PER_HOUR": "3600", "ERP_SYNC_BEAT_LEASE_SECONDS": "2"}
    client = redis_server.client()
    keys = KeySpace(prefix)
    ctx = {"env": settings, "client": client, "keys": keys, "procs": procs, "logs": tmp_path,
           "store": SettingsStore(client, keys)}
    yield ctx
    for p in procs:
        p.stop()


def start_beat(ctx: dict[str, object], name: str) -> Proc:
    proc = beat(name, ctx["env"], ctx["logs"])  # type: ignore[arg-type]
    ctx["procs"].append(proc)  # type: ignore[attr-defined]
    return proc


def leader_pid(ctx: dict[str, object]) -> int | None:
    value = ctx["client"].get(ctx["keys"].beat_leader)  # type: ignore[attr-defined]
    return int(value.split(":")[1]) if value and value != "pending" else None


def manage(ctx: dict[str, object], *args: str, extra: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    env = process_env({**ctx["env"], **(extra or {})})  # type: ignore[dict-item]
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def queued_ids(ctx: dict[str, object]) -> list[tuple[str, str]]:
    """(task id, origin) of every message beat queued (no worker consumes them here)."""
    client: redis.Redis = ctx["client"]  # type: ignore[assignment]
    keys: KeySpace = ctx["keys"]  # type: ignore[assignment]
    out = []
    for q in ("company", "project"):
        for raw in client.lrange(keys.queue(q), 0, -1):
            headers = json.loads(raw)["headers"]
            out.append((headers["id"], headers["origin"]))
    return out


def test_a_change_is_live_without_restart_and_set_reports_it_applied(stack) -> None:  # type: ignore[no-untyped-def]
    store: SettingsStore = stack["store"]
    store.add_company("acme", "xero")
    store.grant("acme", "al", "admin")
    start_beat(stack, "beat1")
    wait_until(lambda: leader_pid(stack), 30, "no beat took the lease")
    done = manage(stack, "settings", "set", "acme", "--as", "al", "--payments-frequency",
                  "hourly", "--no-refresh-jobs", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["version"] == 2 and isinstance(out["applied_ms"], float)
    shown = json.loads(manage(stack, "schedule", "acme", "--json").stdout)
    assert shown["applied_version"] == 2
    assert [e["kind"] for e in shown["entries"]] == ["vendors", "job_costs", "payments"]
    assert all(e["source"] == "beat" for e in shown["entries"])
    assert shown["entries"][2]["cadence"] == "every 3600s"
    status = json.loads(manage(stack, "status", "--json").stdout)
    assert status["leader"] and status["leader"].split(":")[1] == str(leader_pid(stack))
    assert [b["role"] for b in status["beats"]] == ["leader"]
    assert status["entries"] == 3 and status["due_backlog"] == 0


def test_changes_made_while_beat_is_down_are_applied_when_it_starts(stack) -> None:  # type: ignore[no-untyped-def]
    store: SettingsStore = stack["store"]
    store.add_company("acme", "xero")
    store.grant("acme", "al", "admin")
    first = start_beat(stack, "beat1")
    client, keys = stack["client"], stack["keys"]
    wait_until(lambda: client.hget(keys.beat_applied, "acme"), 30, "no beat applied version 1")
    first.stop()
    down = manage(stack, "settings", "set", "acme", "--as", "al", "--no-sync-payments", "--json",
                  extra={"ERP_SYNC_SETTINGS_WAIT_SECONDS": "0.3"})
    assert down.returncode == 0
    assert json.loads(down.stdout)["applied"] is False
    assert "no beat applied version 2" in down.stderr
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    start_beat(stack, "beat2")
    wait_until(lambda: sorted(client.zrange(keys.due, 0, -1)) == ["acme:job_costs",
                                                                  "acme:vendors"], 30,
               "the changes made while beat was down were never applied")
    assert applied_version(client, keys, "acme") == 3


def test_a_killed_leader_is_replaced_and_no_slot_is_missed_or_sent_twice(stack) -> None:  # type: ignore[no-untyped-def]
    stack["env"]["ERP_SYNC_SECONDS_PER_HOUR"] = "6"  # vendors/jobs every 6 s, job costs 12 s
    store: SettingsStore = stack["store"]
    for n in range(120):
        store.add_company(f"c{n}", "quickbooks_online")
        store.add_project(f"c{n}", "p1")
        store.add_project(f"c{n}", "p2")
        store.grant(f"c{n}", "al", "admin")
        store.update_settings(f"c{n}", "al", {"payments_for_synced_invoices": "hourly"})
    beats = {b.pid: b for b in (start_beat(stack, "beat1"), start_beat(stack, "beat2"))}
    wait_until(lambda: leader_pid(stack), 30, "no beat took the lease")
    started = time.time()
    wait_until(lambda: len(queued_ids(stack)) > 200, 30, "beat dispatched nothing")
    first = leader_pid(stack)
    assert first is not None
    beats[first].kill_group()
    wait_until(lambda: leader_pid(stack) not in (None, first), 30, "no standby took over")
    time.sleep(14)  # long enough for every entry to fire again under the new leader
    ended = time.time()
    ids = [tid for tid, _ in queued_ids(stack)]
    assert len(ids) == len(set(ids)), "a slot was dispatched twice"
    slots: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for tid in ids:
        _, company, kind, project, slot = tid.split(":")
        slots[(company, kind, project)].append(int(slot))
    period = {"vendors": 6, "jobs": 6, "payments": 6, "job_costs": 12}
    assert len(slots) == 120 * 6
    for (company, kind, project), seen in slots.items():
        seen.sort()
        gaps = {b - a for a, b in itertools.pairwise(seen)}
        assert gaps <= {period[kind]}, f"{company} {kind} {project} missed a slot: {seen}"
        assert seen[-1] >= ended - period[kind] - 2 and seen[0] <= started + period[kind]


def test_a_paused_leader_dispatches_nothing_after_it_resumes(stack) -> None:  # type: ignore[no-untyped-def]
    stack["env"]["ERP_SYNC_SECONDS_PER_HOUR"] = "2"
    store: SettingsStore = stack["store"]
    for n in range(30):
        store.add_company(f"c{n}", "xero")
    beats = {b.pid: b for b in (start_beat(stack, "beat1"), start_beat(stack, "beat2"))}
    wait_until(lambda: leader_pid(stack), 30, "no beat took the lease")
    wait_until(lambda: queued_ids(stack), 30, "beat dispatched nothing")
    paused = leader_pid(stack)
    assert paused is not None
    beats[paused].signal(signal.SIGSTOP)
    try:
        from_paused = sum(f":{paused}:" in origin for _, origin in queued_ids(stack))
        wait_until(lambda: leader_pid(stack) not in (None, paused), 30, "no standby took over")
        time.sleep(1)
    finally:
        beats[paused].signal(signal.SIGCONT)
    time.sleep(4)  # the resumed beat runs its stale loop: renewals fail, dispatches are fenced
    assert sum(f":{paused}:" in origin for _, origin in queued_ids(stack)) == from_paused
    assert leader_pid(stack) != paused
    ids = [tid for tid, _ in queued_ids(stack)]
    assert len(ids) == len(set(ids))
    assert beats[paused].alive(), "losing the lease must not crash beat"
    assert "lost the lease" in beats[paused].output() or "fenced out" in beats[paused].output()


def test_beat_answers_celery_inspect_ping(stack) -> None:  # type: ignore[no-untyped-def]
    start_beat(stack, "beat1")
    wait_until(lambda: leader_pid(stack), 30, "no beat took the lease")
    env = process_env(stack["env"])  # type: ignore[arg-type]
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping",
                           "--json", "-t", "5"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert f"celerybeat@{socket.gethostname()}" in done.stdout, done.stdout + done.stderr


def test_beat_survives_a_redis_restart_and_applies_a_change_made_after_it(
    own_redis: RedisServer, prefix: str, tmp_path: Path
) -> None:
    client = own_redis.client()
    keys = KeySpace(prefix)
    store = SettingsStore(client, keys)
    store.add_company("acme", "xero")
    store.grant("acme", "al", "admin")
    env = {"ERP_SYNC_REDIS_URL": own_redis.url, "ERP_SYNC_KEY_PREFIX": prefix,
           "ERP_SYNC_BEAT_LEASE_SECONDS": "2"}
    proc = beat("beat1", env, tmp_path)
    try:
        wait_until(lambda: client.hget(keys.beat_applied, "acme"), 30, "beat never applied")
        due_before = own_redis.client().zrange(keys.due, 0, -1, withscores=True)
        own_redis.kill()  # abrupt; appendfsync always keeps every acknowledged write
        time.sleep(3)
        own_redis.start()
        client = own_redis.client()
        assert client.zrange(keys.due, 0, -1, withscores=True) == due_before
        SettingsStore(client, keys).update_settings("acme", "al", {"refresh_erp_job_list": False})
        wait_until(lambda: _jobs_gone(client, keys), 30,
                   "beat did not apply a change after Redis came back:\n" + proc.output()[-2000:])
        assert proc.alive()
        # (whether beat logged the outage depends on whether a command failed while Redis was
        # down or redis-py's own retries bridged it; either way beat lives and catches up)
    finally:
        proc.stop()


def test_beat_refuses_a_broker_that_is_not_its_redis(redis_server: RedisServer, prefix: str,
                                                      tmp_path: Path) -> None:
    env = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix,
           "ERP_SYNC_BROKER_URL": redis_server.url.replace("/0", "/3")}
    proc = beat("beat1", env, tmp_path)
    proc.popen.wait(60)
    proc.stop()
    assert proc.popen.returncode == 2
    assert "refusing to start" in proc.output()


def _jobs_gone(client: redis.Redis, keys: KeySpace) -> bool:
    """The jobs entry was removed while the rest of the company's schedule stands."""
    due = client.zrange(keys.due, 0, -1)
    return "acme:jobs" not in due and "acme:vendors" in due


def test_after_downtime_each_missed_entry_runs_once_not_once_per_missed_period(stack) -> None:  # type: ignore[no-untyped-def]
    stack["env"]["ERP_SYNC_SECONDS_PER_HOUR"] = "1"  # vendors and jobs every second
    store: SettingsStore = stack["store"]
    store.add_company("acme", "sage_100")
    store.grant("acme", "al", "admin")
    store.update_settings("acme", "al", {"sync_project_job_costs": False})
    first = start_beat(stack, "beat1")
    wait_until(lambda: len(queued_ids(stack)) >= 4, 30, "beat dispatched nothing")
    first.stop()
    stopped = time.time()
    before = {tid for tid, _ in queued_ids(stack)}
    time.sleep(6)  # about six periods of each entry go by with no beat
    start_beat(stack, "beat2")
    wait_until(lambda: len({t for t, _ in queued_ids(stack)} - before) >= 6, 30,
               "the restarted beat dispatched nothing")
    new = sorted({t for t, _ in queued_ids(stack)} - before)
    for kind in ("vendors", "jobs"):
        slots = sorted(int(t.rsplit(":", 1)[1]) for t in new if f":{kind}:" in t)
        # Six periods were missed: only the latest of them runs (it is at least five periods
        # after the stop), and from there the schedule continues one period apart.
        assert slots[0] >= stopped + 5 - 1, (stopped, slots)
        assert all(b - a == 1 for a, b in itertools.pairwise(slots)), slots
