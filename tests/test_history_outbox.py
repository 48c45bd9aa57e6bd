"""The history converges after the database refused a run's final row.

A run that ends while the database refuses writes (here an SQLite database whose connections are
made read-only, ``PRAGMA query_only``: SQLite's own "attempt to write a readonly database")
is finished in Redis, and its final record waits there (``erp_sync.runs.outbox``) instead of the
database showing it ``running`` for the whole retention period. Once the database accepts
writes again, the next run that writes its own row, or the periodic flush, brings it in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import event

from config.keys import KeySpace
from config.models import Company, SyncKind
from erp_sync.connectors import Connector, connector_for
from erp_sync.db import Database, RunLog
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.outbox import RunOutbox
from erp_sync.runs.runner import RetryPolicy, Runner
from tests.support.erp import small_company
from tests.support.midway import Midway

pytestmark = pytest.mark.integration


class ReadOnly:
    """Switches a test database between refusing every write and accepting them again."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine

    @staticmethod
    def _refuse(conn: Any, _record: Any) -> None:
        conn.execute("PRAGMA query_only = ON")

    def on(self) -> None:
        event.listen(self.engine, "connect", self._refuse)
        self.engine.dispose()  # pooled connections reopen read-only

    def off(self) -> None:
        event.remove(self.engine, "connect", self._refuse)
        self.engine.dispose()


@pytest.fixture
def readonly(db: Database) -> Iterator[ReadOnly]:
    switch = ReadOnly(db)
    yield switch
    if event.contains(switch.engine, "connect", switch._refuse):
        switch.off()


def runner_with(
    client: redis.Redis, keys: KeySpace, db: Database, hook: Callable[[], object]
) -> Runner:
    def make(company: Company) -> Connector:
        return Midway(connector_for(client, keys, company), hook, after=1)

    # No retries: the run gives up on the database at once (a full database stays full).
    return Runner(client, keys, rng=random.Random(1), connector=make, db=db, policy=RetryPolicy(0))


def delivery(task_id: str, kind: SyncKind = SyncKind.VENDORS) -> Delivery:
    return Delivery(task_id=task_id, company="acme", kind=kind, project=None, slot="s1")


def test_a_run_ending_while_the_database_refuses_writes_reaches_the_history_once_it_accepts(
    real: redis.Redis, keys: KeySpace, db: Database, readonly: ReadOnly
) -> None:
    small_company(real, keys)
    history = RunLog(db)
    # The run starts (its row is written ``running``), then the database turns read-only.
    refused = runner_with(real, keys, db, readonly.on).execute(delivery("t1")).record
    assert refused is not None and refused.status == "failed"
    assert "unavailable" in (refused.error or "")
    readonly.off()
    assert [(r.task_id, r.status) for r in history.recent("acme")] == [("t1", "running")]
    assert RunOutbox(real, keys).size() == 1  # it waits in Redis, not lost
    # The next run whose own row the database takes brings the waiting one in too.
    later = runner_with(real, keys, db, lambda: None).execute(delivery("t2", SyncKind.JOBS))
    assert later.record is not None and later.record.status == "succeeded"
    rows = {r.task_id: (r.status, r.error) for r in history.recent("acme")}
    assert rows == {"t1": ("failed", refused.error), "t2": ("succeeded", None)}
    assert RunOutbox(real, keys).size() == 0


def test_the_periodic_flush_writes_what_waits_and_keeps_it_while_the_database_refuses(
    real: redis.Redis, keys: KeySpace, db: Database, readonly: ReadOnly
) -> None:
    small_company(real, keys)
    runner_with(real, keys, db, readonly.on).execute(delivery("t1"))
    outbox = RunOutbox(real, keys)
    assert outbox.flush(RunLog(db)) == 0 and outbox.size() == 1  # still read-only: kept
    readonly.off()
    assert outbox.flush(RunLog(db)) == 1 and outbox.size() == 0
    assert [r.status for r in RunLog(db).recent("acme")] == ["failed"]
