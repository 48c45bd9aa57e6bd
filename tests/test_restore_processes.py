"""Redis loses everything (``FLUSHALL``) under a running beat and worker; ``restore-from-db``
brings back every company's configuration from the database's copy, the schedule resumes, and
no slot that ran before the loss runs again."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from config.keys import KeySpace
from config.snapshot import FLEET
from erp_sync.control import snapshot
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import UnitOfWork
from erp_sync.db import Database
from erp_sync.db.schema import sync_runs
from tests.support.manage import manage
from tests.support.procs import Proc, beat, stop_all, wait_until, worker
from tests.support.redisproc import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.processes]
FINISHED = re.compile(r"finished company=\S+ .*?outcome=(\w+) .*?task_id=(\S+)")


def _ok(env: dict[str, str], *args: str) -> str:
    done = manage(env, *args, timeout=120)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def _raw_writes(store: SettingsStore) -> None:
    """An alert rule and a connection, written as their stores write them (in the store's
    transaction, so they are marked for the copy like every admin change)."""
    keys = store.keys

    def write(work: UnitOfWork) -> None:
        work.begin()
        work.pipe.hset(keys.alerts("acme"), "a1", '{"id": "a1", "url": "https://h.example/x"}')
        work.pipe.hset(
            keys.connection("acme"),
            mapping={"meta": '{"erp": "xero"}', "secret": "gAAAA-sealed", "generation": "3"},
        )

    store.transact([keys.alerts("acme")], write, company="acme")


def _succeeded(db: Database, company: str, after: datetime) -> int:
    t = sync_runs
    query = select(func.count()).where(
        t.c.company == company, t.c.status == "succeeded", t.c.started_at > after
    )
    with db.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _config(client: redis.Redis, keys: KeySpace) -> dict[str, dict[str, object]]:
    found = {}
    for scope in ("acme", "stone", FLEET):
        got = snapshot.read(client, keys, scope).model_dump()
        got.pop("rev")
        found[scope] = got
    return found


def test_after_a_flushall_restore_from_db_brings_everything_back_and_the_schedule_resumes(
    own_redis: RedisServer, prefix: str, db: Database, tmp_path: Path
) -> None:
    client, keys = own_redis.client(), KeySpace(prefix)
    env = {
        "ERP_SYNC_REDIS_URL": own_redis.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECONDS_PER_HOUR": "2",
        "ERP_SYNC_BEAT_LEASE_SECONDS": "2",
    }
    _ok(env, "company", "add", "acme", "--erp", "xero", "--admin", "al")
    _ok(env, "company", "add", "stone", "--erp", "sage_100", "--admin", "bo")
    _ok(env, "project", "add", "acme", "p1")
    _ok(env, "user", "grant", "acme", "cy", "--level", "standard", "--as", "al")
    _ok(env, "settings", "set", "acme", "--as", "al", "--payments-frequency", "hourly", "--no-wait")
    _ok(env, "pause", "stone", "--as", "bo", "--reason", "month end")
    _raw_writes(SettingsStore(client, keys))
    _ok(env, "user", "grant", "acme", "dee", "--level", "read_only", "--as", "al")  # copies all
    assert client.hlen(keys.config_dirty) == 0, "the CLI left changes uncopied"

    procs: list[Proc] = [
        beat("beat", env, tmp_path),
        worker("w", env, tmp_path, concurrency=4),
    ]
    try:
        start = datetime.now(UTC)
        wait_until(lambda: _succeeded(db, "acme", start) >= 4, 90, "no syncs before the loss")
        before = _config(client, keys)
        client.flushall()  # Redis lost everything (no persistence, or a wiped volume)
        lost_at = datetime.now(UTC)

        asked = manage(env, "restore-from-db", timeout=120)  # no --yes, no answer: refuses
        assert asked.returncode == 1 and asked.stderr.strip() == "error: aborted"
        assert "acme" in asked.stdout and "stone" in asked.stdout
        assert not client.exists(keys.companies), "restore-from-db wrote without --yes"

        out = _ok(env, "restore-from-db", "--yes")
        assert "restored" in out
        assert _config(client, keys) == before
        restored_at = datetime.now(UTC)
        wait_until(
            lambda: _succeeded(db, "acme", restored_at) >= 4,
            90,
            "the schedule did not resume after the restore:\n"
            + procs[0].output()[-2000:]
            + procs[1].output()[-2000:],
        )
        assert _succeeded(db, "stone", lost_at) == 0  # restored paused: it still sends nothing
        assert all(p.alive() for p in procs)
    finally:
        stop_all(procs)
    finished = FINISHED.findall(procs[1].output())
    ran = Counter(task for outcome, task in finished if outcome != "skipped")
    twice = sorted(task for task, n in ran.items() if n > 1)
    assert not twice, f"slots run twice across the loss and the restore: {twice[:5]}"
