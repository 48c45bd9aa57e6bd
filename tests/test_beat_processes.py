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
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.beat.engine import pid_of
from erp_sync.beat.lease import holder_node
from erp_sync.control.store import SettingsStore
from erp_sync.infra.slots import parse_task_id
from erp_sync.schedule.applied import applied_version
from tests.support.procs import ROOT, Proc, beat, process_env, stop_all, wait_until
from tests.support.redisproc import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.processes]


@dataclass
class BeatStack:
    """One test's beats on the session's redis-server, under the test's own key prefix."""

    env: dict[str, str]
    client: redis.Redis
    keys: KeySpace
    store: SettingsStore
    logs: Path
    procs: list[Proc] = field(default_factory=list)

    def start_beat(self, name: str) -> Proc:
        proc = beat(name, self.env, self.logs)
        self.procs.append(proc)
        return proc

    def leader(self) -> str | None:
        """The node id of the lease holder, if any beat leads."""
        return holder_node(self.client.get(self.keys.beat_leader))

    def leader_pid(self) -> int | None:
        node = self.leader()
        return None if node is None else pid_of(node)

    def manage(
        self, *args: str, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=process_env({**self.env, **(extra or {})}),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def queued(self) -> list[tuple[str, str]]:
        """(task id, origin) of every message beat queued (no worker consumes them here)."""
        out = []
        for q in ("company", "project"):
            for raw in self.client.lrange(self.keys.queue(q), 0, -1):
                headers = json.loads(raw)["headers"]
                out.append((str(headers["id"]), str(headers["origin"])))
        return out

    def queued_ids(self) -> list[str]:
        return [tid for tid, _ in self.queued()]


@pytest.fixture
def stack(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[BeatStack]:
    client = redis_server.client()
    keys = KeySpace(prefix)
    ctx = BeatStack(
        env={
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_SECONDS_PER_HOUR": "3600",
            "ERP_SYNC_BEAT_LEASE_SECONDS": "2",
        },
        client=client,
        keys=keys,
        store=SettingsStore(client, keys),
        logs=tmp_path,
    )
    yield ctx
    stop_all(ctx.procs)


def stepped_down(proc: Proc) -> bool:
    """The beat logged losing the lease or being fenced out."""
    return "lost the lease" in proc.output() or "fenced out" in proc.output()


def test_a_change_is_live_without_restart_and_set_reports_it_applied(stack: BeatStack) -> None:
    stack.store.add_company("acme", "xero")
    stack.store.grant("acme", "al", "admin")
    stack.start_beat("beat1")
    wait_until(stack.leader, 30, "no beat took the lease")
    done = stack.manage(
        "settings",
        "set",
        "acme",
        "--as",
        "al",
        "--payments-frequency",
        "hourly",
        "--no-refresh-jobs",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["version"] == 2 and isinstance(out["applied_ms"], float)
    shown = json.loads(stack.manage("schedule", "acme", "--json").stdout)
    assert shown["applied_version"] == 2
    assert [e["kind"] for e in shown["entries"]] == ["vendors", "job_costs", "payments"]
    assert all(e["source"] == "beat" for e in shown["entries"])
    assert shown["entries"][2]["cadence"] == "every 3600s"
    status = json.loads(stack.manage("status", "--json").stdout)
    assert status["leader"] and pid_of(status["leader"]) == stack.leader_pid()
    assert [b["role"] for b in status["beats"]] == ["leader"]
    assert status["entries"] == 3 and status["due_backlog"] == 0


def test_changes_made_while_beat_is_down_are_applied_when_it_starts(stack: BeatStack) -> None:
    store, client, keys = stack.store, stack.client, stack.keys
    store.add_company("acme", "xero")
    store.grant("acme", "al", "admin")
    first = stack.start_beat("beat1")
    wait_until(lambda: client.hget(keys.beat_applied, "acme"), 30, "no beat applied version 1")
    first.stop()
    down = stack.manage(
        "settings",
        "set",
        "acme",
        "--as",
        "al",
        "--no-sync-payments",
        "--json",
        extra={"ERP_SYNC_SETTINGS_WAIT_SECONDS": "0.3"},
    )
    assert down.returncode == 0
    assert json.loads(down.stdout)["applied"] is False
    assert "no beat applied version 2" in down.stderr
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    stack.start_beat("beat2")
    wait_until(
        lambda: sorted(client.zrange(keys.due, 0, -1)) == ["acme:job_costs", "acme:vendors"],
        30,
        "the changes made while beat was down were never applied",
    )
    assert applied_version(client, keys, "acme") == 3


Series = tuple[str, SyncKind, str | None]


def slots_by_series(ids: list[str]) -> dict[Series, list[int]]:
    """The slot times queued for each (company, kind, project), in the order seen."""
    slots: dict[Series, list[int]] = defaultdict(list)
    for tid in ids:
        company, kind, project, slot = parse_task_id(tid)
        slots[(company, kind, project)].append(slot)
    return slots


def test_a_killed_leader_is_replaced_and_no_slot_is_missed_or_sent_twice(stack: BeatStack) -> None:
    stack.env["ERP_SYNC_SECONDS_PER_HOUR"] = "6"  # vendors/jobs every 6 s, job costs 12 s
    store = stack.store
    for n in range(120):
        store.add_company(f"c{n}", "quickbooks_online")
        store.add_project(f"c{n}", "p1")
        store.add_project(f"c{n}", "p2")
        store.grant(f"c{n}", "al", "admin")
        store.update_settings(f"c{n}", "al", {"payments_for_synced_invoices": "hourly"})
    beats = {b.pid: b for b in (stack.start_beat("beat1"), stack.start_beat("beat2"))}
    wait_until(stack.leader, 30, "no beat took the lease")
    started = time.time()
    wait_until(lambda: len(stack.queued()) > 200, 30, "beat dispatched nothing")
    first = stack.leader()
    assert first is not None
    beats[pid_of(first)].kill_group()
    wait_until(lambda: stack.leader() not in (None, first), 30, "no standby took over")
    took_over = time.time()

    def every_entry_fired_again() -> bool:
        """Each of the 720 (company, kind, project) has a slot after the takeover: one only
        the new leader can have dispatched (the old one is dead)."""
        slots = slots_by_series(stack.queued_ids())
        return len(slots) == 120 * 6 and all(max(s) > took_over for s in slots.values())

    wait_until(
        every_entry_fired_again, 40, "an entry never fired under the new leader", interval=0.5
    )
    ended = time.time()
    ids = stack.queued_ids()
    assert len(ids) == len(set(ids)), "a slot was dispatched twice"
    slots = slots_by_series(ids)
    period = {SyncKind.VENDORS: 6, SyncKind.JOBS: 6, SyncKind.PAYMENTS: 6, SyncKind.JOB_COSTS: 12}
    assert len(slots) == 120 * 6
    for (company, kind, project), seen in slots.items():
        seen.sort()
        gaps = {b - a for a, b in itertools.pairwise(seen)}
        assert gaps <= {period[kind]}, f"{company} {kind} {project} missed a slot: {seen}"
        assert seen[-1] >= ended - period[kind] - 2 and seen[0] <= started + period[kind]


def test_a_paused_leader_dispatches_nothing_after_it_resumes(stack: BeatStack) -> None:
    stack.env["ERP_SYNC_SECONDS_PER_HOUR"] = "2"
    for n in range(30):
        stack.store.add_company(f"c{n}", "xero")
    beats = {b.pid: b for b in (stack.start_beat("beat1"), stack.start_beat("beat2"))}
    wait_until(stack.leader, 30, "no beat took the lease")
    wait_until(stack.queued, 30, "beat dispatched nothing")
    paused = stack.leader()
    assert paused is not None
    origin = f"beat@{paused}"
    victim = beats[pid_of(paused)]
    victim.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: stack.leader() not in (None, paused), 30, "no standby took over")
        # Counted once a standby leads: whatever the leader sent before the pause has landed.
        from_paused = sum(o == origin for _, o in stack.queued())
        # Proving a negative: for a second the new leader dispatches slots the paused one also
        # holds as due (entries fire every 2 s), so a resumed beat that still dispatched would
        # show up below under its own origin or as a duplicate.
        time.sleep(1)
    finally:
        victim.signal(signal.SIGCONT)
    # The resumed beat runs its stale loop until it sees it lost the lease (renewal refused) or
    # is fenced out; anything it dispatched before that would already be queued.
    wait_until(
        lambda: stepped_down(victim),
        30,
        "the resumed beat never stepped down:\n" + victim.output()[-2000:],
    )
    assert sum(o == origin for _, o in stack.queued()) == from_paused
    assert stack.leader() != paused
    ids = stack.queued_ids()
    assert len(ids) == len(set(ids))
    assert victim.alive(), "losing the lease must not crash beat"


def test_beat_answers_celery_inspect_ping(stack: BeatStack) -> None:
    stack.start_beat("beat1")
    wait_until(stack.leader, 30, "no beat took the lease")
    node = f"celerybeat@{socket.gethostname()}"
    # Addressed to beat's node, the command returns on its reply instead of waiting out -t.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "inspect",
            "ping",
            "--json",
            "-t",
            "5",
            "-d",
            node,
        ],
        cwd=ROOT,
        env=process_env(stack.env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert node in done.stdout, done.stdout + done.stderr


def test_beat_survives_a_redis_restart_and_applies_a_change_made_after_it(
    own_redis: RedisServer, prefix: str, tmp_path: Path
) -> None:
    client = own_redis.client()
    keys = KeySpace(prefix)
    store = SettingsStore(client, keys)
    store.add_company("acme", "xero")
    store.grant("acme", "al", "admin")
    env = {
        "ERP_SYNC_REDIS_URL": own_redis.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_BEAT_LEASE_SECONDS": "2",
    }
    proc = beat("beat1", env, tmp_path)
    try:
        wait_until(lambda: client.hget(keys.beat_applied, "acme"), 30, "beat never applied")
        due_before = own_redis.client().zrange(keys.due, 0, -1, withscores=True)
        own_redis.kill()  # abrupt; appendfsync always keeps every acknowledged write
        # Down for as long as the lease: it has expired when Redis is back, so beat must
        # win it again before it applies the change below.
        time.sleep(2)
        own_redis.start()
        client = own_redis.client()
        assert client.zrange(keys.due, 0, -1, withscores=True) == due_before
        SettingsStore(client, keys).update_settings("acme", "al", {"refresh_erp_job_list": False})
        wait_until(
            lambda: _jobs_gone(client, keys),
            30,
            "beat did not apply a change after Redis came back:\n" + proc.output()[-2000:],
        )
        assert proc.alive()
        # (whether beat logged the outage depends on whether a command failed while Redis was
        # down or redis-py's own retries bridged it; either way beat lives and catches up)
    finally:
        proc.stop()


def test_beat_refuses_a_broker_that_is_not_its_redis(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_BROKER_URL": redis_server.url.replace("/0", "/3"),
    }
    proc = beat("beat1", env, tmp_path)
    proc.popen.wait(60)
    proc.stop()
    assert proc.popen.returncode == 2
    assert "refusing to start" in proc.output()


def _jobs_gone(client: redis.Redis, keys: KeySpace) -> bool:
    """The jobs entry was removed while the rest of the company's schedule stands."""
    due = client.zrange(keys.due, 0, -1)
    return "acme:jobs" not in due and "acme:vendors" in due


DOWN = 3  # seconds with no beat: three periods of each entry below


def test_after_downtime_each_missed_entry_runs_once_not_once_per_missed_period(
    stack: BeatStack,
) -> None:
    stack.env["ERP_SYNC_SECONDS_PER_HOUR"] = "1"  # vendors and jobs every second
    store = stack.store
    store.add_company("acme", "sage_100")
    store.grant("acme", "al", "admin")
    store.update_settings("acme", "al", {"sync_project_job_costs": False})
    first = stack.start_beat("beat1")
    wait_until(lambda: len(stack.queued()) >= 4, 30, "beat dispatched nothing")
    first.stop()
    stopped = time.time()
    before = set(stack.queued_ids())
    # Time has to pass with no beat (the restarted beat's own start-up adds a second or more):
    # no event to wait for here.
    time.sleep(DOWN)
    stack.start_beat("beat2")
    wait_until(
        lambda: len(set(stack.queued_ids()) - before) >= 6,
        30,
        "the restarted beat dispatched nothing",
    )
    new = [parse_task_id(t) for t in sorted(set(stack.queued_ids()) - before)]
    for kind in (SyncKind.VENDORS, SyncKind.JOBS):
        slots = sorted(slot for _, k, _, slot in new if k == kind)
        # At least DOWN periods were missed: only the latest of them runs (at least DOWN - 1
        # periods after the stop, where the first missed one is at most one period after it),
        # and from there the schedule continues one period apart.
        assert slots[0] >= stopped + DOWN - 1, (stopped, slots)
        assert all(b - a == 1 for a, b in itertools.pairwise(slots)), slots
