"""Admin controls on real ``celery beat`` and ``celery worker`` processes (a 2-second "hour"):
an opted-out project gets no job-cost run, a paused company gets no run until resumed and then
no catch-up storm, and a removed company gets no run at all while a sync queued before the
removal is recorded skipped. Every wait is on something the processes did (their log lines)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from config.keys import KeySpace
from erp_sync.infra.slots import parse_task_id
from tests.support.erp import small_company
from tests.support.inventory import leftover
from tests.support.procs import beat, stop_all, wait_until, worker
from tests.support.reads import zmembers
from tests.support.redisproc import RedisServer
from tests.support.stack import ProcStack

pytestmark = [pytest.mark.integration, pytest.mark.processes]
RECEIVED = re.compile(r"Task [\w.]+\[(sync:\S+)\] received")
FINISHED = re.compile(
    r"finished company=(\S+) project=\S+ sync=(\S+) slot=\S+ "
    r"outcome=(\S+) .*task_id=(\S+)"
)


@dataclass
class Stack(ProcStack):
    def received(self) -> list[tuple[str, str, str | None, int]]:
        """(company, kind, project, slot) of every scheduled task any worker received."""
        out = []
        for proc in self.procs:
            for tid in RECEIVED.findall(proc.output()):
                company, kind, project, slot = parse_task_id(tid)
                out.append((company, kind.value, project, slot))
        return out

    def slots(self, company: str, kind: str, project: str | None = None) -> list[int]:
        return sorted(s for c, k, p, s in self.received() if (c, k, p) == (company, kind, project))


@pytest.fixture
def stack(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    client = redis_server.client()
    s = Stack(
        env={
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_SECONDS_PER_HOUR": "2",
            "ERP_SYNC_BEAT_LEASE_SECONDS": "2",
            "ERP_SYNC_SETTINGS_WAIT_SECONDS": "0",
        },
        client=client,
        keys=KeySpace(prefix),
        logs=tmp_path,
    )
    small_company(client, s.keys, "acme", projects=("p1", "p2"))
    small_company(client, s.keys, "stone", projects=())
    yield s
    stop_all(s.procs)


def test_opt_out_pause_resume_and_remove_change_what_real_processes_run(stack: Stack) -> None:
    stack.manage(
        "settings", "set", "acme", "--as", "alice", "--payments-frequency", "hourly", "--no-wait"
    )
    stack.manage("project", "set", "acme", "p2", "--as", "alice", "--no-sync-job-costs")
    stack.procs += [beat("beat", stack.env, stack.logs), worker("worker1", stack.env, stack.logs)]

    # Opt-out: p1 gets job costs, p2 does not; p2 still gets payments.
    wait_until(
        lambda: (
            len(stack.slots("acme", "job_costs", "p1")) >= 2
            and stack.slots("acme", "payments", "p2")
        ),
        60,
        "acme's project syncs never ran",
    )
    assert stack.slots("acme", "job_costs", "p2") == []

    # Pause: nothing of acme is received for slots after the pause; stone carries on.
    stack.manage("pause", "acme", "--as", "alice", "--reason", "ERP upgrade")
    paused_at = stack.now()
    wait_until(
        lambda: len([s for s in stack.slots("stone", "vendors") if s > paused_at]) >= 3,
        60,
        "stone stopped running while acme was paused",
    )
    assert [r for r in stack.received() if r[0] == "acme" and r[3] > paused_at] == []
    assert "paused: skipped slots=" in stack.procs[0].output()

    # Resume: acme continues at its next slot, one run per period, no catch-up of the pause.
    resuming_at = stack.now()  # before the command: every slot before this was due paused
    stack.manage("resume", "acme", "--as", "alice")
    resumed_at = stack.now()
    wait_until(
        lambda: len([s for s in stack.slots("acme", "vendors") if s > resumed_at]) >= 2,
        60,
        "acme never resumed",
    )
    # A slot due in the last second before the resume may be read by beat's next tick, after
    # the resume (beat ticks at least once a second): that one may run. None before it.
    during = [s for s in stack.slots("acme", "vendors") if paused_at < s < resuming_at - 1]
    assert during == []
    after = [s for s in stack.slots("acme", "vendors") if s > resumed_at]
    assert all(b - a == 2 for a, b in itertools.pairwise(after))  # one a period (2 s)

    # Remove: a sync queued before the removal is skipped at the worker; nothing else runs.
    stack.procs[1].stop()
    stack.manage("sync-now", "acme", "vendors", "--as", "alice")
    stack.manage("company", "remove", "acme", "--as", "alice", "--yes")
    removed_at = stack.now()
    stack.procs.append(worker("worker2", stack.env, stack.logs))
    wait_until(
        lambda: any(
            m[0] == "acme" and m[2] == "skipped" for m in FINISHED.findall(stack.procs[-1].output())
        ),
        60,
        "the queued sync of the removed company was not recorded skipped",
    )
    wait_until(
        lambda: len([s for s in stack.slots("stone", "vendors") if s > removed_at]) >= 3,
        60,
        "stone stopped running after acme was removed",
    )
    assert [r for r in stack.received() if r[0] == "acme" and r[3] > removed_at] == []
    assert not [m for m in zmembers(stack.client, stack.keys.due) if m.startswith("acme:")]
    # What real workers and beats wrote for acme (watermarks, buckets, alert state, its
    # running set...) went with it: only what the inventory keeps is left.
    assert leftover(stack.client, stack.keys, "acme") == []


def test_a_fleet_pause_with_until_is_ended_by_the_leading_beat(stack: Stack) -> None:
    stack.procs += [beat("beat", stack.env, stack.logs), worker("worker1", stack.env, stack.logs)]
    wait_until(lambda: stack.slots("stone", "vendors"), 60, "stone never ran")
    stack.manage("pause", "--all", "--reason", "maintenance night", "--until", "6s")
    paused_at = stack.now()
    status = json.loads(stack.manage("status", "--json"))
    assert status["paused"]["*"]["reason"] == "maintenance night"
    until = datetime.fromisoformat(status["paused"]["*"]["until"]).timestamp()
    wait_until(
        lambda: "fleet.resume" in stack.manage("operator-log"),
        60,
        "the leading beat never ended the pause",
    )
    [entry] = [
        e
        for e in json.loads(stack.manage("operator-log", "--json"))
        if e["action"] == "fleet.resume"
    ]
    assert entry["actor"] == "beat" and entry["new"] == {"automatic": True}
    # No slot due while the pause was in force was sent (slot ids are whole seconds).
    assert [r for r in stack.received() if paused_at < r[3] < until - 1] == []
    resumed_at = stack.now()
    wait_until(
        lambda: [s for s in stack.slots("stone", "vendors") if s > resumed_at],
        60,
        "stone did not run again after the pause ended",
    )
    assert "resumed the fleet" in stack.procs[0].output()
