"""Redis Sentinel on loopback: a primary, a replica and three Sentinels; the primary dies right
after an acknowledged change, the promoted replica has it, and the stack (settings store, beat,
broker, workers) keeps scheduling, syncing and applying changes on it, no slot run twice."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from config.models import StoredSettings
from erp_sync.control.store import SettingsStore
from erp_sync.infra.redis_client import connect
from erp_sync.runs.records import RunRecords
from tests.support.procs import ROOT, Proc, beat, process_env, stop_all, wait_until, worker
from tests.support.redisproc import RedisServer
from tests.support.replicas import ReplicaSet, master_port
from tests.support.runs import recent_runs

pytestmark = [pytest.mark.integration, pytest.mark.processes]
SETTINGS_SET = [sys.executable, "manage.py", "settings", "set", "acme", "--as", "al"]


def _succeeded(history: RunRecords, after: float = 0.0) -> int:
    try:
        return sum(
            1
            for r in recent_runs(history, "acme", 200)
            if r.status == "succeeded" and r.started_at.timestamp() > after
        )
    except redis.RedisError:
        return 0


def _master_port(port: int) -> int | None:
    return master_port(port)


def _jobs_back(client: redis.Redis, keys: KeySpace) -> bool:
    try:
        return "acme:jobs" in client.zrange(keys.due, 0, -1)
    except redis.RedisError:
        return False


def _jobs_gone(client: redis.Redis, keys: KeySpace) -> bool:
    """The jobs entry was removed while the rest of the company's schedule stands."""
    try:
        due = client.zrange(keys.due, 0, -1)
    except redis.RedisError:  # mid-failover: no primary named yet
        return False
    return "acme:jobs" not in due and "acme:vendors" in due


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[ReplicaSet, str]]:
    found = ReplicaSet.start(tmp_path)
    url = found.add_sentinels(tmp_path)
    yield found, url
    found.stop()


FINISHED = re.compile(r"finished company=\S+ .*?outcome=(\w+) .*?task_id=(\S+)")


def test_an_acknowledged_change_survives_the_primary_dying_right_after_it(
    watched: tuple[ReplicaSet, str], prefix: str, tmp_path: Path
) -> None:
    """``settings set`` exits 0 only once the replica has the change (here: after the replica,
    which stopped applying its primary's stream while the command ran, resumes); the primary is
    SIGKILLed the moment the command exits, and the replica Sentinel promotes has the new
    version. Without the WAIT the command exits while the replica lags, the primary dies with
    the only applied copy (a replica drops what it received but had not applied when its
    primary's link breaks), and version 2 is lost.

    The lag is ``CLIENT PAUSE WRITE`` on the replica: a SIGSTOPped replica would still find the
    stream in its kernel's socket buffer when it resumes, and apply it."""
    rs, url = watched
    client = connect(url)
    keys = KeySpace(prefix)
    SettingsStore(client, keys).add_company("acme", "xero", admin="al")
    env = {
        "ERP_SYNC_REDIS_URL": url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECONDS_PER_HOUR": "1",
        "ERP_SYNC_BEAT_LEASE_SECONDS": "2",
    }
    procs: list[Proc] = [
        beat("beat", env, tmp_path),
        worker("w", env, tmp_path, queues="company", concurrency=2),
    ]
    history = RunRecords(client, keys)
    primary, replica = rs.primary.client(), rs.replica
    assert replica.proc is not None
    try:
        wait_until(lambda: _succeeded(history) >= 2, 60, "no sync succeeded before the change")
        _lag(replica, True)
        change = subprocess.Popen(
            [*SETTINGS_SET, "--no-refresh-jobs", "--no-wait"],
            cwd=ROOT,
            env=process_env({**env, "ERP_SYNC_REDIS_WAIT_TIMEOUT_MS": "60000"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stored_at: float | None = None
        resumed = False
        while change.poll() is None:
            if stored_at is None and _version(primary, keys) == 2:
                stored_at = time.monotonic()
            if not resumed and stored_at is not None and time.monotonic() - stored_at > 0.5:
                _lag(replica, False)  # the replica catches up and acknowledges
                resumed = True
            time.sleep(0.01)
        rs.primary.kill()  # SIGKILL the moment the admin was told "done"
        if not resumed:
            _lag(replica, False)
        _out, err = change.communicate(timeout=30)
        assert change.returncode == 0, err
        wait_until(lambda: rs.master_port() == replica.port, 60, "sentinel did not promote")
        promoted_at = time.time()
        assert _version(replica.client(), keys) == 2, "the acknowledged change was lost"
        # Beat and the worker follow the new primary: the change is applied, syncs run on.
        wait_until(lambda: _jobs_gone(client, keys), 60, "the change was not applied after it")
        wait_until(
            lambda: _succeeded(history, after=promoted_at) >= 2,
            90,
            "no sync succeeded after the failover:\n"
            + procs[0].output()[-1500:]
            + procs[1].output()[-1500:],
        )
        # A change made after the failover, through the same Sentinel URL, is applied too.
        SettingsStore(client, keys).update_settings("acme", "al", {"refresh_erp_job_list": True})
        wait_until(
            lambda: _jobs_back(client, keys), 30, "a change after the failover was not applied"
        )
        assert all(p.alive() for p in procs)
    finally:
        stop_all(procs)
        client.close()
    ran = Counter(
        tid for outcome, tid in FINISHED.findall(procs[1].output()) if outcome != "skipped"
    )
    twice = [tid for tid, n in ran.items() if n > 1]
    assert not twice, f"slots run twice: {twice}"
    assert len(ran) >= 4


def _lag(replica: RedisServer, on: bool) -> None:
    """Make the replica stop (or resume) applying its primary's stream; its link stays up."""
    args = ("CLIENT", "PAUSE", 30_000, "WRITE") if on else ("CLIENT", "UNPAUSE")
    replica.client().execute_command(*args)  # type: ignore[no-untyped-call]


def _version(client: redis.Redis, keys: KeySpace) -> int:
    try:
        raw = client.get(keys.settings("acme"))
    except redis.RedisError:
        return 0
    return StoredSettings.model_validate_json(str(raw)).version if raw else 0
