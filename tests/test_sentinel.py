"""Redis Sentinel on loopback: a primary, a replica and a sentinel; the primary dies mid-run and
the stack (settings store, beat, broker, workers) keeps scheduling and syncing on the promoted
replica."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from erp_sync.control.store import SettingsStore
from erp_sync.infra.redis_client import connect
from erp_sync.runs.records import RunRecords
from tests.support.procs import Proc, beat, stop_all, wait_until, worker
from tests.support.redisproc import RedisServer, free_port
from tests.support.runs import recent_runs

pytestmark = [pytest.mark.integration, pytest.mark.processes]
MASTER = "erpmaster"


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, int]]:
    # A replica's full sync starts at once (not after the default 5 s wait for more replicas).
    primary = RedisServer(tmp_path / "primary", extra=["--repl-diskless-sync-delay", "0"]).start()
    replica = RedisServer(
        tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(primary.port)]
    ).start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    sentinel = subprocess.Popen(
        [primary.binary, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis(port=port, decode_responses=True)
    wait_until(lambda: _sentinel_answers(probe), 20, "sentinel did not start")
    wait_until(
        lambda: replica.client().info("replication")["master_link_status"] == "up",
        20,
        "replica never synced",
    )
    yield primary, replica, port
    sentinel.kill()
    sentinel.wait(10)
    probe.close()
    replica.kill()
    primary.kill()


def _sentinel_answers(probe: redis.Redis) -> bool:
    try:
        return bool(
            probe.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "get-master-addr-by-name", MASTER
            )
        )
    except redis.RedisError:
        return False


def test_the_stack_keeps_scheduling_and_syncing_after_the_primary_dies(
    sentinel_set: tuple[RedisServer, RedisServer, int], prefix: str, tmp_path: Path
) -> None:
    primary, replica, port = sentinel_set
    url = f"sentinel://127.0.0.1:{port}/0?master={MASTER}"
    client = connect(url)
    keys = KeySpace(prefix)
    store = SettingsStore(client, keys)
    store.add_company("acme", "xero")
    store.grant("acme", "al", "admin")
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
    try:
        wait_until(lambda: _succeeded(history) >= 2, 60, "no sync succeeded before the failover")
        primary.kill()
        wait_until(lambda: _master_port(port) == replica.port, 30, "sentinel did not promote")
        promoted_at = time.time()
        wait_until(
            lambda: _succeeded(history, after=promoted_at) >= 2,
            90,
            "no sync succeeded after the failover:\n"
            + procs[0].output()[-1500:]
            + procs[1].output()[-1500:],
        )
        store.update_settings("acme", "al", {"refresh_erp_job_list": False})
        wait_until(
            lambda: _jobs_gone(client, keys), 30, "a change after the failover was not applied"
        )
        assert all(p.alive() for p in procs)
    finally:
        stop_all(procs)
        client.close()


def _succeeded(history: RunRecords, after: float = 0.0) -> int:
    try:
        return sum(
            1
            for r in recent_runs(history, "acme", 200)
            if r.status == "succeeded" and r.started_at.timestamp() > after
        )
    except redis.RedisError:
        return 0


def _master_port(port: int) -> int:
    probe = redis.Redis(port=port, decode_responses=True)
    try:
        return int(
            probe.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "get-master-addr-by-name", MASTER
            )[1]
        )
    finally:
        probe.close()


def _jobs_gone(client: redis.Redis, keys: KeySpace) -> bool:
    """The jobs entry was removed while the rest of the company's schedule stands."""
    due = client.zrange(keys.due, 0, -1)
    return "acme:jobs" not in due and "acme:vendors" in due
