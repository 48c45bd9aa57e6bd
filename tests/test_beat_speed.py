"""What the beat's fast paths must keep exact: templated messages and events, plans that skip
work, and a backlog of changes applied without waiting between batches."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import kombu.clocks
import pytest
import redis
from celery import Celery
from celery.events.event import Event
from celery.utils.time import utcoffset

from config.keys import KeySpace
from config.models import Company, PaymentsFrequency, StoredSettings, SyncKind, SyncSettings
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.beat.events import SentEvents
from erp_sync.beat.messages import MessageFactory, envelope
from erp_sync.beat.plan import plan_company
from erp_sync.control.store import SettingsStore
from erp_sync.infra.slots import TASK_NAMES, queue_for, task_id, task_kwargs
from erp_sync.schedule.applied import Applied, applied_version
from erp_sync.schedule.cadence import Cadence, slot_after
from tests.support.clock import Clock
from tests.support.reads import zscores

H = 3600.0
T0 = 1_800_000_000.0
ACME = Company(
    id="acme", name="Acme", erp="xero", timezone="America/Chicago", created_at=datetime.now(UTC)
)


def _stored(settings: SyncSettings, version: int = 1) -> StoredSettings:
    return StoredSettings(
        company="acme",
        version=version,
        settings=settings,
        updated_at=datetime.now(UTC),
        updated_by="t",
    )


def test_an_unchanged_entry_seen_in_the_index_gets_no_op_and_an_unseen_one_is_added() -> None:
    first = plan_company("acme", ACME, _stored(SyncSettings()), None, T0, H)
    changed = plan_company(
        "acme",
        ACME,
        _stored(SyncSettings(payments_for_synced_invoices=PaymentsFrequency.HOURLY), 2),
        first.applied,
        T0 + 10,
        H,
        present={SyncKind.VENDORS, SyncKind.JOBS, SyncKind.PAYMENTS},
    )
    assert changed.ops == [
        ("nx", "acme:job_costs", slot_after(Cadence(2 * H), "acme", SyncKind.JOB_COSTS, T0 + 10)),
        ("set", "acme:payments", slot_after(Cadence(H), "acme", SyncKind.PAYMENTS, T0 + 10)),
    ]
    assert changed.applied == Applied(
        version=2,
        cadences={
            "vendors": "every:3600",
            "jobs": "every:3600",
            "job_costs": "every:7200",
            "payments": "every:3600",
        },
    )


@pytest.mark.parametrize(
    "kind,targets",
    [
        (SyncKind.VENDORS, [None]),
        (SyncKind.JOB_COSTS, ["p1", "tower-2.b", "Z_9"]),
        (SyncKind.PAYMENTS, ["p1"]),
    ],
)
def test_templated_messages_are_exactly_what_envelope_makes(
    kind: SyncKind, targets: list[str | None]
) -> None:
    factory = MessageFactory(Celery("t"), KeySpace("pfx"), origin="beat@host:1:abc")
    built = factory.build_many("ac-me.1", kind, targets, T0 + 0.25)
    assert len(built) == len(targets)
    tags = set()
    for message, project in zip(built, targets, strict=True):
        ours = json.loads(message)
        tid = task_id("ac-me.1", kind, project, T0 + 0.25)
        kwargs = task_kwargs("ac-me.1", kind, project, T0 + 0.25)
        tag = ours["properties"]["delivery_tag"]
        tags.add(tag)
        reference = envelope(
            {**factory._headers[kind], "id": tid, "root_id": tid, "kwargsrepr": repr(kwargs)},
            [],
            kwargs,
            queue_for(kind),
            tag,
        )
        assert message == reference
    assert len(tags) == len(targets)  # a delivery tag per message


def test_task_sent_events_are_what_celerys_dispatcher_sends() -> None:
    class Dispatcher:
        hostname, pid, clock = "beat@host", 42, kombu.clocks.LamportClock()

    events = [
        json.loads(e)
        for e in SentEvents._events(Dispatcher, "acme", SyncKind.JOB_COSTS, ["p1", "p2"], T0)
    ]
    assert [e["clock"] for e in events] == [1, 2]
    for event, project in zip(events, ["p1", "p2"], strict=True):
        tid = task_id("acme", SyncKind.JOB_COSTS, project, T0)
        routing = queue_for(SyncKind.JOB_COSTS)
        expected: dict[str, Any] = Event(
            "task-sent",
            hostname="beat@host",
            utcoffset=utcoffset(),
            pid=42,
            clock=event["clock"],
            uuid=tid,
            root_id=tid,
            parent_id=None,
            name=TASK_NAMES[SyncKind.JOB_COSTS],
            args="()",
            kwargs=repr(task_kwargs("acme", SyncKind.JOB_COSTS, project, T0)),
            retries=0,
            eta=None,
            expires=None,
            queue=routing,
            exchange="",
            routing_key=routing,
        )
        expected["timestamp"] = event["timestamp"]
        assert event == expected


class _Waits(threading.Event):
    """The watcher's event, counting how often the loop waited on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(0)


@pytest.mark.integration
def test_a_backlog_longer_than_a_batch_is_applied_batch_after_batch_without_waiting(
    real: redis.Redis, prefix: str
) -> None:
    keys = KeySpace(prefix)
    store = SettingsStore(real, keys)
    for c in ("a", "b", "c", "d", "e"):
        store.add_company(c, "xero")
        store.grant(c, "al", "admin")
    engine = BeatEngine(
        Celery("t"),
        real,
        keys,
        EngineConfig(change_batch=2, max_block=5.0),
        clock=Clock(T0),
        node="n",
    )
    try:
        engine.step()
        while engine.cursor is None:  # the first start's rebuild
            engine.step()
        for c in ("a", "b", "c", "d", "e"):
            store.update_settings(c, "al", {"refresh_erp_job_list": False})
        waits = engine.watcher.event = _Waits()
        engine.step()  # batch after batch within the step's budget, and no wait after them
        assert [applied_version(real, keys, c) for c in "abcde"] == [2] * 5
        assert waits.waits == 0
        engine.step()
        assert waits.waits == 1  # nothing left: the loop waits for the next change
    finally:
        engine.close()


@pytest.mark.integration
def test_a_rebuild_keeps_the_timing_of_entries_it_finds_and_restores_lost_ones(
    real: redis.Redis, prefix: str
) -> None:
    keys = KeySpace(prefix)
    store = SettingsStore(real, keys)
    store.add_company("acme", "xero")
    engine = BeatEngine(
        Celery("t"), real, keys, EngineConfig(max_block=0.0), clock=Clock(T0), node="n"
    )
    try:
        engine.step()
        real.zadd(keys.due, {"acme:vendors": T0 + 5})  # a timing the rebuild must keep
        real.zrem(keys.due, "acme:jobs")  # lost: the rebuild adds it back at its next slot
        assert isinstance(engine.clock, Clock)
        engine.clock.t = T0 + 1
        engine.resync()
        scores = zscores(real, keys.due)
        assert scores["acme:vendors"] == T0 + 5
        assert scores["acme:jobs"] == slot_after(Cadence(H), "acme", SyncKind.JOBS, T0 + 1)
    finally:
        engine.close()
