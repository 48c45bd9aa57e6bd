"""``task-sent`` events for what beat queues, so Flower shows a scheduled sync from the moment it
is queued (Celery sends them from ``apply_async``, which beat does not use).

The dispatch script never waits for them: beat hands each dispatched batch (entries, not
messages) to a queue in memory, and a thread of its own expands them into events and publishes
them on the deployment's event exchange, up to 500 in one message (Celery's buffered events),
written as JSON text from a template instead of dicts handed to the serialiser.
Events are best effort, like Celery's: if the broker is unreachable the batch is dropped (logged
once per outage), and if the thread falls more than ``MAX_PENDING`` entries behind, new ones are
dropped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from celery import Celery
from celery.utils.time import utcoffset

from config.models import SyncKind
from erp_sync.infra.slots import TASK_NAMES, queue_for, task_id, task_kwargs

log = logging.getLogger("erp_sync.beat")
MAX_PENDING = 100_000
BUFFER = 500  # events per message, as Celery's buffered events
Entry = tuple[str, SyncKind, Sequence[str | None], float]  # company, kind, targets, slot


class SentEvents:
    """Publishes ``task-sent`` for dispatched entries from a background thread."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.enabled = bool(app.conf.task_send_sent_event)
        self._pending: queue.Queue[Entry] = queue.Queue(MAX_PENDING)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def add(self, entries: Sequence[Entry]) -> None:
        """Queue events for these dispatched entries (never blocks the caller)."""
        if not self.enabled or not entries:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sent-events", daemon=True)
            self._thread.start()
        for entry in entries:
            with contextlib.suppress(queue.Full):  # MAX_PENDING behind: this one is dropped
                self._pending.put_nowait(entry)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        connection: Any = None
        dispatcher: Any = None
        while not self._stop.is_set():
            try:
                batch = [self._pending.get(timeout=0.5)]
            except queue.Empty:
                continue
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(self._pending.get_nowait())
            try:
                if dispatcher is None:
                    connection = self.app.connection_for_write()
                    dispatcher = self.app.events.Dispatcher(connection, enabled=True)
                events = [e for entry in batch for e in self._events(dispatcher, *entry)]
                for start in range(0, len(events), BUFFER):
                    self._send(dispatcher, events[start : start + BUFFER])
                if self._failing:
                    log.info("beat: task-sent events flow again")
                self._failing = False
            except Exception as exc:  # best effort: a dropped event never stops dispatching
                if not self._failing:
                    log.warning(
                        "beat: cannot publish task-sent events (%s); dropping them "
                        "until the broker answers",
                        str(exc).splitlines()[0][:200],
                    )
                self._failing = True
                with contextlib.suppress(Exception):
                    connection.release()
                connection = dispatcher = None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()

    @staticmethod
    def _events(
        dispatcher: Any, company: str, kind: SyncKind, targets: Sequence[str | None], slot: float
    ) -> list[str]:
        """The JSON of each target's ``task-sent`` event, as ``Dispatcher.send`` makes it.

        Written from a template rather than as dicts for the event serialiser: a burst sends
        thousands a second, and beat's one core also builds and queues the tasks themselves.
        """
        head, tail = _parts(dispatcher.hostname, dispatcher.pid, kind)
        head = f'{head}{utcoffset()}, "clock": '
        tail = f'{tail}{time.time()!r}, "type": "task-sent"}}'
        out = []
        for project in targets:
            tid = _q(task_id(company, kind, project, slot))
            kwargs = _q(repr(task_kwargs(company, kind, project, slot)))
            out.append(
                f'{head}{dispatcher.clock.forward()}, "uuid": {tid}, "root_id": {tid}, '
                f'"kwargs": {kwargs}{tail}'
            )
        return out

    @staticmethod
    def _send(dispatcher: Any, events: list[str]) -> None:
        """One message holding a list of events (what Celery's buffered ``task`` group sends;
        its receivers, and so Flower, read each as an event)."""
        dispatcher.producer.publish(
            f"[{', '.join(events)}]",
            routing_key="task.multi",
            exchange=dispatcher.exchange.name,
            declare=[dispatcher.exchange],
            content_type="application/json",
            content_encoding="utf-8",
            headers=dispatcher.headers,
            delivery_mode=dispatcher.delivery_mode,
        )


_q = encode_basestring_ascii  # a JSON string literal, as json.dumps writes it


@functools.cache
def _parts(hostname: str, pid: int, kind: SyncKind) -> tuple[str, str]:
    """What every ``task-sent`` event of ``kind`` from this process has before ``utcoffset``
    and before ``timestamp``."""
    name, routing = TASK_NAMES[kind], queue_for(kind)
    return (
        f'{{"hostname": {_q(hostname)}, "pid": {pid}, "utcoffset": ',
        f', "parent_id": null, "name": {_q(name)}, "args": "()", "retries": 0, '
        f'"eta": null, "expires": null, "queue": {_q(routing)}, "exchange": "", '
        f'"routing_key": {_q(routing)}, "timestamp": ',
    )
