"""Final run records the database has not taken yet, kept in Redis until it does.

A run is finished in Redis first (``run_finish.lua``: its record, executed marker and lock in one
step, the commit point), and its final record is put in ``KeySpace.runs_outbox`` in that same
step; the database row is written next and the entry taken out. When the database is down, full
or read-only at that moment (or the worker dies in between), the entry stays, and the history
people read would otherwise show the run ``running`` for the whole retention period. ``flush``
writes what waits: the next run whose own row the database took does it, and so does the hourly
housekeeping task (``tasks.maintenance.prune_history``), so the history converges as soon as the
database accepts writes again.
"""

from __future__ import annotations

import logging

import redis

from config.keys import KeySpace
from config.models import RunRecord
from erp_sync.db import RunLog
from erp_sync.errors import DatabaseError

log = logging.getLogger("erp_sync.worker")
FLUSH_BATCH = 200


class RunOutbox:
    """The deployment's run records waiting for the database (client passed in)."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.key = client, keys.runs_outbox

    def taken(self, task_id: str) -> None:
        """The database has ``task_id``'s final record: it waits no more."""
        self.client.hdel(self.key, task_id)

    def size(self) -> int:
        return int(self.client.hlen(self.key))

    def flush(self, runs: RunLog, limit: int = FLUSH_BATCH) -> int:
        """Write up to ``limit`` waiting records to the history; returns how many were written
        (0 while the database still refuses: they wait for the next flush)."""
        _, batch = self.client.hscan(self.key, 0, count=limit)
        if not isinstance(batch, dict) or not batch:
            return 0
        records = []
        for task_id, raw in list(batch.items())[:limit]:
            try:
                records.append(RunRecord.model_validate_json(str(raw)))
            except ValueError:  # unreadable: it can never be written, so it must not wait
                log.error("dropping an unreadable waiting run record task_id=%s", task_id)
                self.client.hdel(self.key, task_id)
        try:
            runs.save_many(records)
        except DatabaseError as exc:
            log.warning("%s run records still wait for the database: %s", len(records), exc)
            return 0
        if records:
            self.client.hdel(self.key, *[r.task_id for r in records])
            log.info("history caught up: %s run records written from Redis", len(records))
        return len(records)
