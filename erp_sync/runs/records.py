"""Each run's working record in Redis: one per task id, newest first, capped per company.

The history people read is the database's (``erp_sync.db.runs``, kept by age); this is the copy
the run scripts change together with the run's lock and executed marker, and what a redelivery
reads to count its attempts. A run's record is created when it starts (status ``running``) and
rewritten as it ends, so a run killed mid-way stays ``running`` until its redelivery takes the
same record over (the ``attempt`` counter shows it). Saving is one Lua script: a new run id is
pushed onto the company's list and the oldest runs beyond the cap are dropped with their
records, atomically. The cap only has to cover the runs still in flight or about to be
redelivered: at 1,000 records these were 82 % of a company's Redis (bench/footprint.py).
"""

from __future__ import annotations

import redis

from config.keys import KeySpace
from config.models import RunRecord
from erp_sync.infra import lua

HISTORY_CAP = 200


class RunRecords:
    """Reads and writes the working run records of one deployment (client passed in)."""

    def __init__(self, client: redis.Redis, keys: KeySpace, cap: int = HISTORY_CAP) -> None:
        self.client, self.keys, self.cap = client, keys, cap
        self._save = lua.load(client, "history_save")

    def save(self, record: RunRecord) -> None:
        self._save(
            keys=[self.keys.runs(record.company), self.keys.history(record.company)],
            args=[record.task_id, record.model_dump_json(), self.cap],
        )

    def get(self, company: str, task_id: str) -> RunRecord | None:
        raw = self.client.hget(self.keys.runs(company), task_id)
        return RunRecord.model_validate_json(raw) if raw else None
