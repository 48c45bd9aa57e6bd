"""Admin controls as beat sees them, in-process on a real redis-server with a test clock:
pause and resume, the fleet pause, a pause that ends by itself, removal, project opt-out,
and a time-zone change that moves a daily run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.beat.plan import plan_company
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.pause import Pauses
from erp_sync.control.store import SettingsStore
from erp_sync.infra.slots import parse_task_id
from erp_sync.schedule.cadence import Cadence, slot_after
from tests.support.clock import Clock
from tests.support.reads import zmembers

pytestmark = pytest.mark.integration
H = 3600.0
T0 = 1_800_000_000.0


class World:
    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys
        self.store = SettingsStore(client, keys)
        self.pauses, self.life = Pauses(self.store), Lifecycle(self.store)
        self.clock = Clock(T0)
        self.engines: list[BeatEngine] = []

    def engine(self, seconds_per_hour: float = H) -> BeatEngine:
        engine = BeatEngine(
            Celery("test"),
            self.client,
            self.keys,
            EngineConfig(seconds_per_hour=seconds_per_hour, lease_seconds=2, max_block=0.01),
            clock=self.clock,
            node="a",
        )
        self.engines.append(engine)
        return engine

    def sent(self) -> list[tuple[str, SyncKind, str | None, int]]:
        """Every queued slot as (company, kind, project, slot), in no particular order."""
        out: list[Any] = []
        for q in ("company", "project"):
            out += [
                parse_task_id(json.loads(m)["headers"]["id"])
                for m in self.client.lrange(self.keys.queue(q), 0, -1)
            ]
        return out

    def run_until(self, engine: BeatEngine, t: float) -> None:
        """Step the engine each simulated minute up to ``t`` (no wall-clock waits)."""
        while self.clock.t < t:
            self.clock.t = min(t, self.clock.t + 60)
            engine.step()


@pytest.fixture
def world(real: redis.Redis, keys: KeySpace) -> Iterator[World]:
    w = World(real, keys)
    w.store.add_company("acme", "xero", admin="al")
    w.store.add_company("stone", "xero", admin="al")
    for p in ("p1", "p2"):
        w.store.add_project("acme", p)
    yield w
    for e in w.engines:
        e.close()


def test_a_paused_company_dispatches_nothing_and_resumes_at_the_next_slot(world: World) -> None:
    engine = world.engine()
    engine.step()
    world.pauses.pause("acme", "al", reason="ERP upgrade", until=None)
    world.run_until(engine, T0 + 5 * H)
    assert {c for c, *_ in world.sent()} == {"stone"}
    assert int(world.client.hget(world.keys.beat_stats, "paused_slots") or 0) >= 5
    world.pauses.resume("acme", "al")
    resumed_at = world.clock.t
    world.run_until(engine, resumed_at + H + 60)
    vendors = [slot for c, k, _, slot in world.sent() if (c, k) == ("acme", SyncKind.VENDORS)]
    # exactly one vendors slot in the hour after resuming: the next one, no catch-up storm
    assert vendors == [int(slot_after(Cadence(H), "acme", SyncKind.VENDORS, resumed_at))]
    assert [e.action for e in world.store.audit("acme", 2)] == ["company.resume", "company.pause"]


def test_a_fleet_pause_stops_every_company_until_resumed(world: World) -> None:
    engine = world.engine()
    engine.step()
    world.pauses.pause(None, "operator", reason="maintenance night", until=None)
    world.run_until(engine, T0 + 3 * H)
    assert world.sent() == []
    world.pauses.resume(None, "operator")
    world.run_until(engine, world.clock.t + H + 60)
    assert {c for c, *_ in world.sent()} == {"acme", "stone"}
    assert [e.action for e in world.store.operator_log(2)] == ["fleet.resume", "fleet.pause"]


def test_a_pause_until_a_time_is_ended_by_the_leader_and_audited(world: World) -> None:
    engine = world.engine()
    engine.step()
    world.pauses.pause("acme", "al", reason=None, until=T0 + 2 * H)
    world.run_until(engine, T0 + 2 * H - 60)
    assert world.pauses.get("acme") is not None
    world.run_until(engine, T0 + 2 * H + 60)
    assert world.pauses.get("acme") is None
    [entry] = world.store.audit("acme", 1)
    assert (entry.actor, entry.action, entry.new) == ("beat", "company.resume", {"automatic": True})
    assert world.client.zcard(world.keys.paused_until) == 0
    world.run_until(engine, world.clock.t + H + 60)
    assert "acme" in {c for c, *_ in world.sent()}


def test_a_fenced_out_beat_cannot_end_a_pause(world: World) -> None:
    world.pauses.pause("acme", "al", reason=None, until=T0 + 60)
    assert world.pauses.expire(T0 + 120, world.keys.beat_leader, "not-the-leader|1") == []
    assert world.pauses.get("acme") is not None


def test_a_removed_company_stops_at_once_and_the_sweep_does_not_bring_it_back(world: World) -> None:
    engine = world.engine()
    engine.step()
    world.client.set(world.keys.cursor("acme", "job_costs", "p1"), "w1")
    world.client.set(world.keys.cursor("acme", "vendors", None), "w2")
    world.life.remove_company("acme", "al")
    members = zmembers(world.client, world.keys.due)
    assert not [m for m in members if m.startswith("acme:")]
    assert world.client.hget(world.keys.beat_applied, "acme") is None
    assert (
        world.client.exists(
            world.keys.cursor("acme", "job_costs", "p1"), world.keys.cursor("acme", "vendors", None)
        )
        == 0
    )
    engine.sweeper.start_pass()
    for _ in range(3):
        engine.sweeper.slice(str(engine.lease.token))
    world.run_until(engine, T0 + 3 * H)
    assert {c for c, *_ in world.sent()} == {"stone"}
    assert [e.action for e in world.store.audit("acme", 1)] == ["company.remove"]
    # the same id can be added again and is scheduled afresh
    world.store.add_company("acme", "xero", admin="al")
    world.run_until(engine, world.clock.t + H + 60)
    assert "acme" in {c for c, *_ in world.sent()}


def test_a_plan_made_before_a_removal_cannot_reschedule_the_company(world: World) -> None:
    engine = world.engine()
    engine.step()
    company, stored = world.store.get_company("acme"), world.store.sync_settings("acme")
    world.life.remove_company("acme", "al")
    # the plan a racing beat (or sweep slice) made from what it read just before the removal
    plan = plan_company("acme", company, stored, None, world.clock.t, H)
    engine.index.apply(str(engine.lease.token), [plan], {"acme": 1}, None)
    assert not [m for m in zmembers(world.client, world.keys.due) if m.startswith("acme:")]


def test_an_opted_out_project_leaves_the_job_cost_fan_out_only(world: World) -> None:
    engine = world.engine()
    engine.step()
    world.life.set_project("acme", "p2", "al", sync_job_costs=False)
    world.store.update_settings("acme", "al", {"payments_for_synced_invoices": "hourly"})
    world.run_until(engine, T0 + 2 * H + 60)
    fan = {(k, p) for c, k, p, _ in world.sent() if c == "acme" and k.project_level}
    assert (SyncKind.JOB_COSTS, "p1") in fan and (SyncKind.JOB_COSTS, "p2") not in fan
    assert (SyncKind.PAYMENTS, "p2") in fan


def test_a_removed_project_leaves_every_fan_out_and_loses_its_watermarks(world: World) -> None:
    engine = world.engine()
    engine.step()
    world.client.set(world.keys.cursor("acme", "job_costs", "p2"), "w")
    world.life.remove_project("acme", "p2", "al")
    assert world.client.exists(world.keys.cursor("acme", "job_costs", "p2")) == 0
    world.run_until(engine, T0 + 2 * H + 60)
    assert {p for c, k, p, _ in world.sent() if c == "acme" and k.project_level} == {"p1"}


def test_a_time_zone_change_moves_the_daily_run_live(world: World) -> None:
    engine = world.engine()
    engine.step()
    before = world.client.zscore(world.keys.due, "acme:payments")
    world.life.set_company("acme", "al", timezone="Asia/Tokyo")
    engine.step()
    after = world.client.zscore(world.keys.due, "acme:payments")
    expected = slot_after(Cadence(24 * H, "Asia/Tokyo"), "acme", SyncKind.PAYMENTS, T0)
    assert after == expected != before
