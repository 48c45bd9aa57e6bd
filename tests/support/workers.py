"""Real Celery workers for a test, and waiting for a run to end (shared by the process tests).

``Workers`` starts worker processes on the test's environment and stops them all at the end;
``finished`` waits on the run's working record (Redis) until it has a final status.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import redis

from config.keys import KeySpace
from config.models import RunRecord
from erp_sync.runs.records import RunRecords
from tests.support import procs


class Start(Protocol):
    """Starts a worker on this test's redis-server and prefix, once it is ready to consume."""

    def __call__(
        self,
        name: str = "w1",
        env: dict[str, str] | None = None,
        *,
        pool: str = "threads",
        concurrency: int = 4,
    ) -> procs.Proc: ...


class Workers:
    """The worker processes one test started (on ``env`` plus each start's own)."""

    def __init__(self, env: Mapping[str, str], logdir: Path) -> None:
        self.env, self.logdir = dict(env), logdir
        self.started: list[procs.Proc] = []

    def start(
        self,
        name: str = "w1",
        env: dict[str, str] | None = None,
        *,
        pool: str = "threads",
        concurrency: int = 4,
        ready: bool = True,
    ) -> procs.Proc:
        proc = procs.worker(
            name, {**self.env, **(env or {})}, self.logdir, pool=pool, concurrency=concurrency
        )
        self.started.append(proc)
        if ready:
            proc.wait_for(" ready.", 30)
        return proc

    def stop(self) -> None:
        procs.stop_all(self.started)


def finished(
    client: redis.Redis, keys: KeySpace, company: str, task_id: str, timeout: float = 30
) -> RunRecord:
    """The run's final record, once it has one (not running, not deferred)."""
    history = RunRecords(client, keys)
    procs.wait_until(
        lambda: (
            (r := history.get(company, task_id)) is not None
            and r.status not in ("running", "deferred")
        ),
        timeout,
        f"{task_id} never finished",
    )
    record = history.get(company, task_id)
    assert record is not None
    return record
