"""``task-sent`` events for what beat queues, so Flower shows a scheduled sync from the moment it
is queued (Celery sends them from ``apply_async``, which beat does not use).

The dispatch script never waits for them: beat hands each dispatched batch (entries, not
messages) to a queue in memory, and a thread of its own expands them into events and publishes
them on the deployment's event exchange, up to 500 in one message (Celery's buffered events).
Events are best effort, like Celery's: if the broker is unreachable the batch is dropped (logged
once per outage), and if the thread falls more than ``MAX_PENDING`` entries behind, new ones are
dropped and counted.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery

from config.models import SyncKind
from erp_sync.slots import TASK_NAMES, queue_for, task_id, task_kwargs

log = logging.getLogger("erp_sync.beat")
MAX_PENDING = 100_000
Entry = tuple[str, SyncKind, Sequence[str | None], float]  # company, kind, targets, slot


class SentEvents:
    """Publishes ``task-sent`` for dispatched entries from a background thread."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.enabled = bool(app.conf.task_send_sent_event)
        self.dropped = 0
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
            try:
                self._pending.put_nowait(entry)
            except queue.Full:
                self.dropped += 1

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
                    # Buffered: up to 500 events go out as one message (a list, which Celery's
                    # event receiver, and so Flower, reads as so many events).
                    dispatcher = self.app.events.Dispatcher(
                        connection, enabled=True, buffer_group={"task"}, buffer_limit=500)
                for company, kind, targets, slot in batch:
                    self._publish(dispatcher, company, kind, targets, slot)
                dispatcher.flush()
                if self._failing:
                    log.info("beat: task-sent events flow again")
                self._failing = False
            except Exception as exc:  # best effort: a dropped event never stops dispatching
                if not self._failing:
                    log.warning("beat: cannot publish task-sent events (%s); dropping them "
                                "until the broker answers", str(exc).splitlines()[0][:200])
                self._failing = True
                with contextlib.suppress(Exception):
                    connection.release()
                connection = dispatcher = None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()

    @staticmethod
    def _publish(dispatcher: Any, company: str, kind: SyncKind, targets: Sequence[str | None],
                 slot: float) -> None:
        name, routing = TASK_NAMES[kind], queue_for(kind)
        for project in targets:
            tid = task_id(company, kind, project, slot)
            dispatcher.send("task-sent", uuid=tid, root_id=tid, parent_id=None, name=name,
                            args="()", kwargs=repr(task_kwargs(company, kind, project, slot)),
                            retries=0, eta=None, expires=None, queue=routing, exchange="",
                            routing_key=routing)
