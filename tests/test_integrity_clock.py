"""One clock: beats whose own clocks are wrong still send every slot once, on time.

Three real ``celery beat`` processes with clocks 10 s ahead, 1 s ahead and 10 s behind (more and
less than a period), a real worker, and a real redis-server whose clock is the truth. The leader
is SIGKILLed twice so each wrong clock gets to lead, and a sync is switched off and on again right
after each failover. Then, from the worker's log and the run history: no slot was received twice,
none started before it was due, and no slot of an untouched sync was skipped.
"""

from __future__ import annotations

import itertools
import re
import signal
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from config.models import RunRecord, SyncKind
from erp_sync.beat.engine import pid_of
from erp_sync.beat.lease import holder_node
from erp_sync.control.store import SettingsStore
from erp_sync.infra.slots import parse_task_id
from erp_sync.schedule.cadence import Cadence, slot_at_or_before
from erp_sync.throttle.ratelimit import CompanyLimit, set_company_limit
from tests.support import procs
from tests.support.erp import small_company
from tests.support.redisproc import RedisServer
from tests.support.skew import skewed

pytestmark = [pytest.mark.integration, pytest.mark.processes]

HOUR = 4.0  # seconds per schedule hour: hourly syncs every 4 s, job costs every 8 s
SKEWS = (10.0, 1.0, -10.0)  # the first leads first: far ahead, then slightly ahead, far behind
PERIODS = {
    SyncKind.VENDORS: HOUR,
    SyncKind.JOBS: HOUR,
    SyncKind.JOB_COSTS: 2 * HOUR,
    SyncKind.PAYMENTS: HOUR,
}
RECEIVED = re.compile(r"Task [\w.]+\[(sync:\S+)\] received")
EARLY_TOLERANCE = 0.05  # seconds: the worker reads its clock after Redis handed it the message


def leader(client: redis.Redis, keys: KeySpace) -> str | None:
    return holder_node(client.get(keys.beat_leader))


def dispatched(client: redis.Redis, keys: KeySpace) -> int:
    return int(client.hget(keys.beat_stats, "slots") or 0)


def reached(client: redis.Redis, keys: KeySpace, floor: int) -> bool:
    return dispatched(client, keys) >= floor


def replaced(client: redis.Redis, keys: KeySpace, node: str) -> bool:
    return leader(client, keys) not in (None, node)


def history(client: redis.Redis, keys: KeySpace, companies: list[str]) -> list[RunRecord]:
    return [
        RunRecord.model_validate_json(raw)
        for c in companies
        for raw in client.hgetall(keys.runs(c)).values()
    ]


def exact_slot(task_id: str) -> tuple[tuple[str, SyncKind, str | None], float]:
    """The (company, kind, project) and the precise slot time of a scheduled task id."""
    company, kind, project, whole_second = parse_task_id(task_id)
    slot = slot_at_or_before(Cadence(PERIODS[kind]), company, kind, whole_second + 0.999)
    return (company, kind, project), slot


def test_beats_with_wrong_clocks_send_no_slot_twice_early_or_not_at_all(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    client, keys = redis_server.client(), KeySpace(prefix)
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECONDS_PER_HOUR": f"{HOUR:g}",
        "ERP_SYNC_BEAT_LEASE_SECONDS": "1",
    }
    companies = ["c1", "c2", "c3"]
    store = SettingsStore(client, keys)
    for company in companies:
        small_company(client, keys, company, projects=("p1",))
        # No concurrency cap in the way: a deferral would receive the same task id again.
        set_company_limit(client, keys, company, CompanyLimit(concurrency=10))
        store.update_settings(company, "alice", {"payments_for_synced_invoices": "hourly"})
    worker = procs.worker("worker", env, tmp_path, concurrency=8)
    beats: list[procs.Proc] = []
    try:
        for n, skew in enumerate(SKEWS):
            beats.append(procs.beat(f"beat{n}", skewed(env, skew, tmp_path), tmp_path))
            if n == 0:  # the clock furthest ahead leads first
                procs.wait_until(
                    lambda: leader(client, keys) is not None,
                    30,
                    f"no beat took the lease:\n{beats[0].output()[-2000:]}",
                )
        for _ in range(2):
            floor = dispatched(client, keys) + 12  # more than a period's slots
            procs.wait_until(
                partial(reached, client, keys, floor), 30, "the leader stopped dispatching"
            )
            node = leader(client, keys)
            assert node is not None
            victim = next(b for b in beats if b.pid == pid_of(node))
            victim.kill_group()
            procs.wait_until(partial(replaced, client, keys, node), 30, "no beat took over")
            # Switched off and on at once after the failover: the sync resumes at its next slot.
            store.update_settings("c1", "alice", {"refresh_erp_companies_list": False})
            store.update_settings("c1", "alice", {"refresh_erp_companies_list": True})
        floor = dispatched(client, keys) + 12
        procs.wait_until(lambda: dispatched(client, keys) >= floor, 30, "the last leader stalled")
        for beat in beats:
            beat.signal(signal.SIGTERM)
        for beat in beats:
            beat.stop()
        procs.wait_until(
            lambda: (
                client.llen(keys.queue("company")) + client.llen(keys.queue("project")) == 0
                and all(r.status != "running" for r in history(client, keys, companies))
            ),
            30,
            "the worker never drained the queues",
        )
    finally:
        for proc in [*beats, worker]:
            proc.stop()

    received = Counter(RECEIVED.findall(worker.output()))
    twice = sorted(tid for tid, n in received.items() if n > 1)
    assert not twice, f"slots received more than once: {twice[:5]}"
    # Beat's own count agrees: every message it queued is a distinct slot.
    assert int(client.hget(keys.beat_stats, "messages") or 0) == len(received)

    runs = [r for r in history(client, keys, companies) if r.trigger == "schedule"]
    assert len(runs) == len(received) > 30
    early = []
    series: dict[tuple[str, SyncKind, str | None], list[float]] = {}
    for run in runs:
        entry, slot = exact_slot(run.task_id)
        if run.started_at.timestamp() < slot - EARLY_TOLERANCE:
            early.append((run.task_id, round(slot - run.started_at.timestamp(), 3)))
        series.setdefault(entry, []).append(slot)
    assert not early, f"slots started before they were due (seconds early): {early[:5]}"

    worst = max(exact_slot(r.task_id)[1] - r.started_at.timestamp() for r in runs)
    print(
        f"clock figures: beats skewed {SKEWS} s, 2 leader kills, 2 toggles; slots run "
        f"{len(runs)}, received twice 0, started early 0 (closest start to its due time "
        f"{-worst:+.3f} s), entries checked for gaps {len(series)}"
    )
    for (company, kind, project), slots in sorted(series.items()):
        if company == "c1" and kind is SyncKind.VENDORS:
            continue  # switched off and on: it resumes at its next slot, by design
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(sorted(slots))]
        assert all(g == PERIODS[kind] for g in gaps), (
            f"{company}/{kind.value}/{project}: slots not one period apart: {gaps}"
        )
        assert len(slots) >= 2, f"{company}/{kind.value} ran only {len(slots)} times"
