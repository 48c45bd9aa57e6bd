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

from datetime import UTC, datetime
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from config.keys import KeySpace
from config.models import parse
from erp_sync import lua

HISTORY_CAP = 200
# ``deferred``: the run gave its worker slot back to wait and comes back under the same task id.
Status = Literal["succeeded", "failed", "skipped", "running", "deferred"]


def now() -> datetime:
    return datetime.now(UTC)


class RunRecord(BaseModel):
    """One sync run, as ``history --json`` shows it (DESIGN.md fields plus task bookkeeping)."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    company: str
    project: str | None
    scheduled_for: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Status = "running"
    counts: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    task_id: str
    trigger: str = "schedule"
    attempt: int = 1
    duration_ms: float | None = None

    def finish(
        self,
        status: Status,
        *,
        error: str | None = None,
        counts: dict[str, int] | None = None,
        at: datetime | None = None,
    ) -> RunRecord:
        end = at or now()
        return self.model_copy(
            update={
                "status": status,
                "error": error,
                "counts": counts or {},
                "finished_at": end,
                "duration_ms": round((end - self.started_at).total_seconds() * 1000, 1),
            }
        )


class History:
    """Reads and writes one deployment's run history (client passed in)."""

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

    def recent(self, company: str, limit: int = 50) -> list[RunRecord]:
        """The company's runs, newest first."""
        ids = self.client.lrange(self.keys.history(company), 0, max(limit, 1) - 1)
        if not ids:
            return []
        raws = self.client.hmget(self.keys.runs(company), ids)
        return [
            parse(RunRecord, r, f"run {i!r} of {company!r}")
            for i, r in zip(ids, raws, strict=True)
            if r
        ]
