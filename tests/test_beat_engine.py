"""The beat engine in-process against a real redis-server, with a clock the test controls."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.connection import Connection

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.control.store import SettingsStore
from erp_sync.infra.slots import parse_task_id, slot_iso, task_id
from erp_sync.schedule.applied import applied_version
from erp_sync.schedule.cadence import Cadence, slot_after
from tests.support.clock import Clock
from tests.support.reads import zmembers, zscores
from tests.support.redisproc import RedisServer

pytestmark = pytest.mark.integration
H = 3600.0
T0 = 1_800_000_000.0
World = tuple[redis.Redis, KeySpace, SettingsStore]
MakeEngine = Callable[[Clock, str], BeatEngine]


@pytest.fixture
def world(real: redis.Redis, prefix: str) -> World:
    keys = KeySpace(prefix)
    store = SettingsStore(real, keys)
    store.add_company("acme", "xero")
    store.add_company("stone", "sage_100")
    for p in ("p1", "p2", "p3"):
        store.add_project("acme", p)
    store.grant("acme", "al", "admin")
    return real, keys, store


@pytest.fixture
def make_engine(world: World) -> Iterator[MakeEngine]:
    client, keys, _ = world
    engines: list[BeatEngine] = []
    app = Celery("test")

    def build(clock: Clock, node: str) -> BeatEngine:
        engine = BeatEngine(
            app, client, keys, EngineConfig(lease_seconds=2, max_block=0.01), clock=clock, node=node
        )
        engines.append(engine)
        return engine

    yield build
    for e in engines:
        e.close()


def queued(client: redis.Redis, keys: KeySpace) -> list[dict[str, Any]]:
    """Every queued message, as the JSON the broker holds."""
    out: list[dict[str, Any]] = []
    for q in ("company", "project"):
        out += [json.loads(m) for m in client.lrange(keys.queue(q), 0, -1)]
    return out


def ids(client: redis.Redis, keys: KeySpace) -> list[str]:
    return sorted(str(m["headers"]["id"]) for m in queued(client, keys))


def test_first_start_builds_every_company_schedule(world: World, make_engine: MakeEngine) -> None:
    client, keys, _ = world
    engine = make_engine(Clock(T0), "a")
    engine.step()
    assert sorted(client.zrange(keys.due, 0, -1)) == [
        "acme:job_costs",
        "acme:jobs",
        "acme:payments",
        "acme:vendors",
        "stone:job_costs",
        "stone:jobs",
        "stone:vendors",
    ]
    assert applied_version(client, keys, "acme") == 1


def test_due_slots_are_dispatched_once_with_deterministic_ids(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, _ = world
    clock = Clock(T0)
    engine = make_engine(clock, "a")
    engine.step()
    clock.t = T0 + 2 * H + 1  # every entry except daily payments is due
    engine.step()
    engine.step()
    got = ids(client, keys)
    assert len(got) == len(set(got))
    vendors_slot = slot_after(Cadence(H), "acme", SyncKind.VENDORS, T0)
    vendors_slot2 = vendors_slot + H
    latest = vendors_slot2 if vendors_slot2 <= clock.t else vendors_slot
    assert task_id("acme", SyncKind.VENDORS, None, latest) in got  # missed slot ran once
    slots = [parse_task_id(i) for i in got]
    assert sorted(p or "" for c, k, p, _ in slots if (c, k) == ("acme", SyncKind.JOB_COSTS)) == [
        "p1",
        "p2",
        "p3",
    ]
    assert not [s for s in slots if s[1] == SyncKind.PAYMENTS]  # daily: not due yet
    # stone has no projects: its job-cost entry fires and fans out to nobody
    assert [k for c, k, _, _ in slots if c == "stone"] == [SyncKind.JOBS, SyncKind.VENDORS]


def test_messages_are_what_celery_workers_consume(world: World, make_engine: MakeEngine) -> None:
    client, keys, _ = world
    clock = Clock(T0)
    engine = make_engine(clock, "a")
    engine.step()
    clock.t = T0 + 2 * H + 1
    engine.step()
    url = client.connection_pool.connection_kwargs
    with Connection(
        f"redis://127.0.0.1:{url['port']}/0",  # type: ignore[no-untyped-call]
        transport_options={"global_keyprefix": keys.broker_prefix},
    ) as conn:
        queue = conn.SimpleQueue("project")
        message = queue.get(timeout=2)
        assert message.headers["task"] == "tasks.project.sync_job_costs"
        args, kwargs, _embed = message.payload
        assert args == [] and set(kwargs) == {"company", "project", "slot", "trigger"}
        slot = parse_task_id(message.headers["id"])[3]
        assert message.headers["id"] == task_id(
            kwargs["company"], SyncKind.JOB_COSTS, kwargs["project"], slot
        )
        assert kwargs["slot"] == slot_iso(slot)
        message.ack()
        queue.close()


def test_a_change_is_applied_by_message_and_announced(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, store = world
    engine = make_engine(Clock(T0), "a")
    engine.step()
    before = zscores(client, keys.due)
    store.update_settings(
        "acme", "al", {"payments_for_synced_invoices": "hourly", "refresh_erp_job_list": False}
    )
    engine.step()
    after = zscores(client, keys.due)
    assert applied_version(client, keys, "acme") == 2
    assert "acme:jobs" not in after
    assert after["acme:vendors"] == before["acme:vendors"]  # untouched entries keep their timing
    assert after["acme:payments"] == slot_after(Cadence(H), "acme", SyncKind.PAYMENTS, T0)


def test_only_the_leader_dispatches_and_a_fenced_out_leader_writes_nothing(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, store = world
    clock = Clock(T0)
    a, b = make_engine(clock, "a"), make_engine(clock, "b")
    a.step()
    b.step()
    assert a.lease.token and not b.lease.token
    # a is "paused": its lease vanishes and b takes over while a still believes it leads.
    client.delete(keys.beat_leader)
    b.step()
    assert b.lease.token
    clock.t = T0 + 2 * H + 1
    assert a.lease.is_leader  # a's local view is stale...
    a.dispatch_due()
    store.update_settings("acme", "al", {"refresh_erp_companies_list": False})
    a.apply_changes()
    assert queued(client, keys) == []  # ...but the fence refused every write
    assert "acme:vendors" in client.zrange(keys.due, 0, -1)
    b.step()
    assert len(queued(client, keys)) > 0 and not a.lease.token


def test_a_change_made_while_no_beat_ran_is_applied_on_start(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, store = world
    first = make_engine(Clock(T0), "a")
    first.step()
    first.close()
    store.update_settings("acme", "al", {"sync_project_job_costs": False})
    store.update_settings("acme", "al", {"payments_for_synced_invoices": "never"})
    second = make_engine(Clock(T0 + 60), "b")
    second.step()
    assert applied_version(client, keys, "acme") == 3
    assert sorted(m for m in zmembers(client, keys.due) if m.startswith("acme:")) == [
        "acme:jobs",
        "acme:vendors",
    ]


def test_changes_trimmed_from_the_feed_force_a_full_rebuild(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, store = world
    first = make_engine(Clock(T0), "a")
    first.step()
    first.close()
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    client.xtrim(keys.changes, maxlen=0)
    second = make_engine(Clock(T0), "b")
    second.step()
    assert "acme:jobs" not in client.zrange(keys.due, 0, -1)
    assert applied_version(client, keys, "acme") == 2


def test_a_corrupt_company_is_skipped_and_everyone_else_is_served(
    world: World, make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    client, keys, store = world
    client.set(keys.settings("stone"), "{not json")
    engine = make_engine(Clock(T0), "a")
    engine.step()
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    client.xadd(keys.changes, {"company": "stone", "version": "9"})
    engine.step()
    engine.step()
    assert applied_version(client, keys, "acme") == 2
    assert not [m for m in zmembers(client, keys.due) if m.startswith("stone:")]
    assert sum("skipping company=stone" in r.message for r in caplog.records) == 1


def test_redis_restart_keeps_due_times_and_beat_carries_on(
    own_redis: RedisServer, env: pytest.MonkeyPatch, prefix: str
) -> None:
    client = own_redis.client()
    keys = KeySpace(prefix)
    SettingsStore(client, keys).add_company("acme", "xero")
    engine = BeatEngine(
        Celery("t"),
        client,
        keys,
        EngineConfig(lease_seconds=2, max_block=0.01),
        clock=Clock(T0),
        node="a",
    )
    engine.step()
    before = client.zrange(keys.due, 0, -1, withscores=True)
    own_redis.restart()
    engine.step()  # redis-py reconnects; the lease survived in the AOF
    assert client.zrange(keys.due, 0, -1, withscores=True) == before
    engine.close()


def test_beat_warns_when_redis_may_evict_schedule_keys(
    own_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = own_redis.client()
    engine = BeatEngine(Celery("t"), client, KeySpace(prefix), EngineConfig(), node="a")
    assert engine.check_eviction_policy() == "noeviction"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    client.config_set("maxmemory-policy", "allkeys-lru")
    assert engine.check_eviction_policy() == "allkeys-lru"
    assert "may evict" in caplog.text
    engine.close()


def test_a_malformed_due_entry_is_dropped_and_does_not_wedge_dispatching(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, _ = world
    clock = Clock(T0)
    engine = make_engine(clock, "a")
    engine.step()
    client.zadd(keys.due, {"acme:bogus": T0 - 5, "stone:": T0 - 5})
    client.hset(keys.beat_applied, "stone", '{"version": 1, "cadences": {"vendors": "every:x"}}')
    clock.t = T0 + 2 * H + 1
    engine.step()
    engine.step()
    due = client.zrange(keys.due, 0, -1)
    assert "acme:bogus" not in due and "stone:" not in due
    assert any(i.startswith("sync:acme:vendors:") for i in ids(client, keys))
    # The corrupt record did not cost stone its schedule: the sweep rebuilt it from settings.
    assert {"stone:vendors", "stone:jobs", "stone:job_costs"} <= set(due)
    assert applied_version(client, keys, "stone") == 1


def test_an_error_half_way_through_an_election_does_not_leave_a_blind_leader(
    world: World, make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, keys, store = world
    engine = make_engine(Clock(T0), "a")
    real_saved_cursor = engine.feed.saved_cursor
    calls = {"n": 0}

    def flaky() -> str | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise redis.ConnectionError("blip during the election")
        return real_saved_cursor()

    monkeypatch.setattr(engine.feed, "saved_cursor", flaky)
    with pytest.raises(redis.ConnectionError):
        engine.step()
    assert engine.lease.token  # it holds the lease...
    engine.step()  # ...and the next tick finishes the election instead of leading blind
    assert engine.cursor is not None and client.zcard(keys.due) == 7
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    engine.step()
    assert applied_version(client, keys, "acme") == 2


def test_a_leader_whose_renewal_replies_were_lost_keeps_leading_and_applying(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, store = world
    engine = make_engine(Clock(T0), "a")
    engine.step()
    engine.lease._renewed_at -= 60  # as if every renewal reply had timed out
    assert not engine.lease.is_leader
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    engine.step()
    assert engine.lease.is_leader and engine.cursor is not None
    assert applied_version(client, keys, "acme") == 2


def test_the_leader_forgets_beats_whose_heartbeat_stopped_long_ago(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, _ = world
    clock = Clock(T0)
    leader, standby = make_engine(clock, "a"), make_engine(clock, "b")
    leader.step()
    standby.step()
    client.hset(
        keys.beat_nodes,
        mapping={  # two beats SIGKILLed long ago, one unreadable
            "dead-1": json.dumps({"role": "leader", "last_tick": T0 - 3600, "pid": 1, "host": "h"}),
            "dead-2": json.dumps({"role": "standby", "last_tick": T0 - 200, "pid": 2, "host": "h"}),
            "garbage": "not json",
        },
    )
    clock.t = T0 + 31  # the leader looks every 30 s, on its heartbeat
    standby.step()
    leader.step()
    assert sorted(client.hkeys(keys.beat_nodes)) == ["a", "b"]


def test_an_applied_record_beat_cannot_plan_from_is_rebuilt_and_stops_nobody(
    world: World, make_engine: MakeEngine
) -> None:
    client, keys, store = world
    clock = Clock(T0)
    engine = make_engine(clock, "a")
    engine.step()
    sent = int(client.hget(keys.beat_stats, "slots") or 0)
    # A renamed kind in acme's record, an infinite and an overflowing due time for stone.
    client.hset(keys.beat_applied, "acme", '{"version": 1, "cadences": {"vendorz": "every:3600"}}')
    client.zadd(keys.due, {"stone:vendors": float("-inf"), "stone:jobs": 1.8e12})
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})  # a change to plan
    clock.t = T0 + 2 * H + 1
    for _ in range(3):
        engine.step()
    assert applied_version(client, keys, "acme") == 2  # planned as a rebuild, not a crash
    assert int(client.hget(keys.beat_stats, "slots") or 0) > sent  # dispatching went on
    due = zscores(client, keys.due)
    assert "acme:jobs" not in due and math.isfinite(due["stone:vendors"])
    assert due["stone:jobs"] < T0 + 4 * H  # the sweep put it back on its cadence
