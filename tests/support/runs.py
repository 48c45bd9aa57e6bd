"""Reads of the working run records in Redis that only tests and benchmarks make.

The product reads one run's record by task id (``RunRecords.get``); the history people read is
the database's (``RunLog.recent``). Tests and benchmarks also list a company's working records,
newest first, as the run scripts keep them: the company's history list of task ids and its hash
of records (``erp_sync/runs/records.py``).
"""

from __future__ import annotations

from config.models import RunRecord, parse
from erp_sync.runs.records import RunRecords


def recent_runs(history: RunRecords, company: str, limit: int = 50) -> list[RunRecord]:
    """The company's newest ``limit`` working run records, newest first."""
    client, keys = history.client, history.keys
    ids = client.lrange(keys.history(company), 0, max(limit, 1) - 1)
    if not ids:
        return []
    raws = client.hmget(keys.runs(company), ids)
    return [
        parse(RunRecord, r, f"run {i!r} of {company!r}")
        for i, r in zip(ids, raws, strict=True)
        if r
    ]
