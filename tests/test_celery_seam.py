"""Beat's task messages against what Celery and kombu themselves write for the same task.

Beat builds its messages (``erp_sync/beat/messages.py``) instead of calling ``apply_async``, so
nothing in Celery checks them. Here real Celery publishes the same task (same name, id, kwargs,
queue and expiry) through the deployment's configuration to a real redis-server, and the stored
message is compared with beat's, field by field and then byte for byte. Only the fields in
``ALLOWED`` may differ, each for the reason it gives; so an upgrade that changes Celery's
protocol-2 headers, the body or kombu's Redis envelope fails here, naming the field
(docs/upgrading-celery.md says what to do then). A worker-side read of beat's bytes, through
kombu's consumer and Celery's ``Request``, must give the task, its id and its kwargs; and the
``task-sent`` event beat writes for it (``events.py``) must be the one Celery sends.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from celery.worker.request import Request

import tasks.company  # registers the company-level sync tasks
import tasks.project  # noqa: F401  (registers the project-level sync tasks)
from config.env import get_settings
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.beat.events import SentEvents
from erp_sync.beat.messages import MessageFactory
from erp_sync.beat.static import run_task_id
from erp_sync.infra.broker import install
from erp_sync.infra.celery_config import celery_config
from erp_sync.infra.publish import CeleryPublisher
from erp_sync.infra.slots import ALERTS_QUEUE, TASK_NAMES, queue_for, task_id, task_kwargs

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0
COMPANY = "ac-me.1"
PROJECT = "tower-2.b"
NODE = "beat@host:4242:0f1e2d"

# The one allow-list: fields of a stored message that may differ from Celery's, and why.
ALLOWED: dict[str, str] = {
    "properties.delivery_tag": (
        "random per message: kombu draws a uuid4 for each publish, beat draws its own; kombu's "
        "QoS keys the unacked hash by it, so it must only be unique (test_beat_speed checks that)"
    ),
    "headers.origin": (
        "the sender's node name: Celery writes its process's gen<pid>@<host>, beat writes "
        "beat@<node> (the chaos runs count a paused leader's messages by it)"
    ),
    "properties.reply_to": (
        "Celery's producer names its thread's reply queue (app.thread_oid) for rpc:// results; "
        "the deployment has no result backend (asserted below), so beat leaves it empty"
    ),
    "properties.expiration": (
        "only when the task has expires: kombu's Producer adds a per-message TTL (milliseconds "
        "left, taken at publish time); kombu's Redis transport never reads it (a list has no "
        "per-message TTL) and the worker enforces the `expires` header, which is equal"
    ),
    # task-sent events (events.py), compared as the dicts their receivers (Flower) read.
    "event.clock": "the dispatcher's Lamport clock, one tick further for the second event",
    "event.timestamp": "the time each event was made",
}
# What stock Celery beat (``task.apply_async`` of a registered task) writes besides: the task's
# own options copied into the headers. Beat leaves them to the worker, and ``Request`` resolves
# them to the same values (test_stock_apply_async_differs_only_in_options_the_worker_resolves).
TASK_OPTION_HEADERS = {"headers.ignore_result", "headers.timelimit"}
MISSING = "<missing>"


@dataclass
class Seam:
    """Celery apps configured like the deployment, beat's factory, and the Redis they share."""

    publisher: CeleryPublisher  # producer-only, as `sync-now` publishes (no task registry)
    worker: Any  # a Celery app with the sync tasks registered, as worker.py's app has them
    factory: MessageFactory
    client: redis.Redis
    keys: KeySpace

    def stored(self, queue: str) -> str:
        """The one message on ``queue``'s list, taken off it."""
        messages = self.client.lrange(self.keys.queue(queue), 0, -1)
        assert len(messages) == 1, f"expected one message on {self.keys.queue(queue)}"
        self.client.delete(self.keys.queue(queue))
        return str(messages[0])


@pytest.fixture
def seam(real: redis.Redis, keys: KeySpace) -> Iterator[Seam]:
    install()  # the deployment's transport, as worker.py installs it in every process
    env = get_settings()
    worker = Celery("erp_sync", set_as_current=False)
    worker.config_from_object(celery_config(env))
    # The real sync tasks are shared tasks (``@app.task``'s default): importing their modules
    # gives every app, this one too, its own copy of them when it finalizes.
    assert set(TASK_NAMES.values()) <= set(worker.tasks)
    publisher = CeleryPublisher(env)
    # The reasons in ALLOWED and TASK_OPTION_HEADERS hold only for this configuration.
    assert publisher.app.conf.result_backend is None and worker.conf.result_backend is None
    assert worker.conf.task_ignore_result is True
    yield Seam(publisher, worker, MessageFactory(worker, keys, origin=NODE), real, keys)
    publisher.close()
    worker.close()


def target(kind: SyncKind) -> str | None:
    """The project of a project-level sync's task; None for a company-level one."""
    return PROJECT if kind.project_level else None


def fields(raw: str) -> dict[str, Any]:
    """Every leaf of a stored message by its dotted path, the base64 body decoded (``body.args``,
    ``body.kwargs.company``, ``body.embed.chain``, ...)."""
    message = json.loads(raw)
    args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
    message["body"] = {"args": args, "kwargs": kwargs, "embed": embed}
    out: dict[str, Any] = {}

    def walk(path: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{path}.{key}" if path else key, item)
        else:
            out[path] = value

    walk("", message)
    return out


def differences(theirs: str, ours: str) -> dict[str, tuple[Any, Any]]:
    """Path -> (Celery's value, beat's value) for every field that is not equal."""
    a, b = fields(theirs), fields(ours)
    return {
        path: (a.get(path, MISSING), b.get(path, MISSING))
        for path in sorted(a.keys() | b.keys())
        if a.get(path, MISSING) != b.get(path, MISSING)
    }


def assert_same_message(theirs: str, ours: str) -> None:
    """Equal but for ``ALLOWED``, field by field, then byte for byte with those fields taken from
    beat's message (so key order, escaping and the base64 body are the same too)."""
    unexpected = {p: v for p, v in differences(theirs, ours).items() if p not in ALLOWED}
    assert unexpected == {}, f"beat's message differs from Celery's (theirs, ours): {unexpected}"
    celery = json.loads(theirs)
    assert json.dumps(celery) == theirs  # kombu stores plain json.dumps: re-serialising is exact
    beat = json.loads(ours)
    for path in (p for p in ALLOWED if not p.startswith("event.")):
        # Replaced in place, so Celery's key order is what gets compared.
        section, name = path.split(".")
        if name in beat[section]:
            celery[section][name] = beat[section][name]
        else:
            celery[section].pop(name, None)
    assert json.dumps(celery) == ours


def beats_allowed_fields_are_sane(ours: str) -> None:
    message = json.loads(ours)
    assert message["headers"]["origin"] == NODE
    assert message["properties"]["reply_to"] == ""
    assert uuid.UUID(message["properties"]["delivery_tag"]).version == 4


@pytest.mark.parametrize("kind", list(SyncKind))
def test_beats_slot_message_is_what_celery_writes_for_the_same_task(
    seam: Seam, kind: SyncKind
) -> None:
    name, queue, project = TASK_NAMES[kind], queue_for(kind), target(kind)
    tid = task_id(COMPANY, kind, project, T0)
    kwargs = task_kwargs(COMPANY, kind, project, T0)
    assert ("project" in kwargs) is kind.project_level  # both kwargs shapes are covered
    seam.publisher.send(name, kwargs, tid, queue)
    assert seam.factory.queue_key(kind) == seam.keys.queue(queue)  # the list kombu just filled
    theirs = seam.stored(queue)
    ours = seam.factory.build_many(COMPANY, kind, (project,), T0)[0]
    assert_same_message(theirs, ours)
    beats_allowed_fields_are_sane(ours)
    headers = json.loads(ours)["headers"]
    assert (headers["eta"], headers["expires"]) == (None, None)  # beat sets neither on a slot


def test_a_static_entrys_message_with_args_and_expires_is_what_celery_writes(seam: Seam) -> None:
    # The app's own beat_schedule entries (static.py): positional args and an expiry.
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    tid = run_task_id("prune", T0)
    # A tuple, as StaticEntry holds them (a list would show as a list in Celery's argsrepr).
    args, kwargs = (7, "x"), {"deep": True, "why": 'é"q'}
    seam.publisher.app.send_task(
        "app.cleanup", args=args, kwargs=kwargs, task_id=tid, queue=ALERTS_QUEUE, expires=expires
    )
    theirs = seam.stored(ALERTS_QUEUE)
    assert "expiration" in json.loads(theirs)["properties"]  # the allowed difference, present
    ours = seam.factory.build_task("app.cleanup", args, kwargs, tid, ALERTS_QUEUE, expires)
    assert_same_message(theirs, ours)
    beats_allowed_fields_are_sane(ours)
    assert json.loads(ours)["headers"]["expires"] == expires.isoformat()


@pytest.mark.parametrize("kind", list(SyncKind))
def test_beats_task_sent_event_is_what_celery_sends_for_the_same_task(
    seam: Seam, kind: SyncKind
) -> None:
    name, queue, project = TASK_NAMES[kind], queue_for(kind), target(kind)
    app = seam.publisher.app
    captured: list[dict[str, Any]] = []
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, enabled=True)
        # Celery's own event, caught where the dispatcher would publish it.
        dispatcher._publish = lambda event, producer, routing_key, **_: captured.append(event)
        app.send_task(
            name,
            kwargs=task_kwargs(COMPANY, kind, project, T0),
            task_id=task_id(COMPANY, kind, project, T0),
            queue=queue,
            event_dispatcher=dispatcher,
        )
        ours = json.loads(SentEvents._events(dispatcher, COMPANY, kind, (project,), T0)[0])
    seam.stored(queue)
    assert len(captured) == 1
    theirs = json.loads(json.dumps(captured[0]))  # as the event serialiser writes it
    unequal = {
        key: (theirs.get(key, MISSING), ours.get(key, MISSING))
        for key in sorted(theirs.keys() | ours.keys())
        if theirs.get(key, MISSING) != ours.get(key, MISSING)
    }
    unexpected = {k: v for k, v in unequal.items() if f"event.{k}" not in ALLOWED}
    assert unexpected == {}, f"beat's task-sent differs from Celery's (theirs, ours): {unexpected}"
    assert theirs["type"] == "task-sent" and ours["clock"] > theirs["clock"]


def as_received(app: Any, raw: str, name: str) -> Request:
    """Celery's worker-side view of a stored message: kombu's transport ``Message`` (what the
    Redis channel makes of the popped list item) handed to Celery's ``Request``."""
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        message = channel.Message(json.loads(raw), channel=channel)
        return Request(message, app=app, task=app.tasks[name])


@pytest.mark.parametrize("kind", list(SyncKind))
def test_stock_apply_async_differs_only_in_options_the_worker_resolves_the_same(
    seam: Seam, kind: SyncKind
) -> None:
    name, queue, project = TASK_NAMES[kind], queue_for(kind), target(kind)
    tid = task_id(COMPANY, kind, project, T0)
    task = seam.worker.tasks[name]
    task.apply_async(kwargs=task_kwargs(COMPANY, kind, project, T0), task_id=tid, queue=queue)
    theirs = seam.stored(queue)
    ours = seam.factory.build_many(COMPANY, kind, (project,), T0)[0]
    beyond = set(differences(theirs, ours)) - set(ALLOWED)
    assert beyond == TASK_OPTION_HEADERS
    stock, beat = as_received(seam.worker, theirs, name), as_received(seam.worker, ours, name)
    assert stock.ignore_result is beat.ignore_result is True  # no result is stored

    def limits(request: Request) -> tuple[Any, Any]:
        hard, soft = request.time_limits  # what execute_using_pool hands the pool
        return hard or task.time_limit, soft or task.soft_time_limit

    assert limits(stock) == limits(beat) == (seam.worker.conf.task_time_limit, task.soft_time_limit)
    assert task.soft_time_limit == seam.worker.conf.task_soft_time_limit


@pytest.mark.parametrize("kind", list(SyncKind))
def test_a_worker_consumes_beats_bytes_as_the_task_with_its_id_and_kwargs(
    seam: Seam, kind: SyncKind
) -> None:
    name, queue, project = TASK_NAMES[kind], queue_for(kind), target(kind)
    raw = seam.factory.build_many(COMPANY, kind, (project,), T0)[0]
    seam.client.lpush(seam.factory.queue_key(kind), raw)  # what due_dispatch.lua does
    app = seam.worker
    received: list[Any] = []
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        consumer = app.amqp.TaskConsumer(
            channel,
            queues=[app.amqp.queues[queue]],
            callbacks=[lambda _body, message: received.append(message)],
        )
        with consumer:
            conn.drain_events(timeout=5)
        assert len(received) == 1
        message = received[0]
        request = Request(message, app=app, task=app.tasks[name])
        assert request.task_name == name
        assert request.id == request.root_id == task_id(COMPANY, kind, project, T0)
        assert request.parent_id is None and request.eta is None and request.expires is None
        assert list(request.args) == []
        assert request.kwargs == task_kwargs(COMPANY, kind, project, T0)
        assert request.delivery_info["routing_key"] == queue
        assert request.ignore_result is True
        # Delivered but not acknowledged: in kombu's unacked hash under beat's delivery tag
        # (the visibility sweep would hand it back); acknowledging removes it.
        tag = json.loads(raw)["properties"]["delivery_tag"]
        assert message.delivery_tag == tag
        unacked = channel.client.hget(channel.unacked_key, tag)
        assert unacked is not None and json.loads(unacked)[0]["headers"]["id"] == request.id
        message.ack()
        assert channel.client.hget(channel.unacked_key, tag) is None
    assert seam.client.llen(seam.factory.queue_key(kind)) == 0
