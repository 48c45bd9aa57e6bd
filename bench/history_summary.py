"""Where ``status`` and the metrics read each kind's last success and failure from.

``python -m bench.history_summary``: 100k runs in ``sync_runs`` (SQLite and a private
PostgreSQL), then the query that would answer "last success/failure per kind" from the table
(``GROUP BY kind, status`` over the runs), against the small Redis summary the run-finish script
keeps in step (``<prefix>:runs:last``, one ``HGETALL``). Median of 7 reads each, with the spread.
The table's cost grows with the history (90 days by default); the summary's does not, which is
why ``status`` and the metrics read the summary.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from config.models import RunRecord
from erp_sync.db import Database, RunLog
from erp_sync.db.schema import sync_runs
from tests.support.pgproc import start_postgres
from tests.support.redisproc import RedisServer, require_redis_server

RUNS = 100_000
KINDS = ("vendors", "jobs", "job_costs", "payments")
READS = 7


def fill(db: Database, n: int) -> None:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    RunLog(db).import_many(
        RunRecord(
            kind=KINDS[i % 4],
            company=f"c{i % 1000}",
            project=None,
            scheduled_for="s",
            started_at=base + timedelta(seconds=i),
            finished_at=base + timedelta(seconds=i + 1),
            status="succeeded" if i % 10 else "failed",
            task_id=f"t{i}",
        )
        for i in range(n)
    )


def timed(read: object) -> tuple[float, float, float]:
    """(median, min, max) milliseconds of ``READS`` calls."""
    assert callable(read)
    times = []
    for _ in range(READS):
        started = time.perf_counter()
        read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="history-summary-"))
    print(f"load before: {os.getloadavg()[0]:.2f}")
    query = (
        select(sync_runs.c.kind, sync_runs.c.status, func.max(sync_runs.c.finished_at))
        .where(sync_runs.c.status.in_(["succeeded", "failed"]))
        .group_by(sync_runs.c.kind, sync_runs.c.status)
    )
    pg = start_postgres(tmp)
    try:
        for name, url in (
            ("sqlite", f"sqlite:///{tmp}/runs.db"),
            ("postgresql", pg.create_database("history_summary")),
        ):
            db = Database(url)
            db.upgrade()
            fill(db, RUNS)

            def read(db: Database = db) -> None:
                with db.engine.connect() as conn:
                    conn.execute(query).all()

            med, lo, hi = timed(read)
            print(f"{name:10} table, {RUNS:,} runs: median {med:.1f} ms ({lo:.1f}-{hi:.1f})")
            db.dispose()
    finally:
        pg.stop()
    require_redis_server()
    server = RedisServer(tmp / "redis").start()
    try:
        client = server.client()
        client.hset(
            "bench:runs:last",
            mapping={
                f"{s}:{k}": '{"company":"c1","finished_at":"2026-11-26T00:00:00+00:00"}'
                for s in ("succeeded", "failed")
                for k in KINDS
            },
        )
        med, lo, hi = timed(lambda: client.hgetall("bench:runs:last"))
        print(f"{'redis':10} summary (HGETALL): median {med:.3f} ms ({lo:.3f}-{hi:.3f})")
    finally:
        server.stop()
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
