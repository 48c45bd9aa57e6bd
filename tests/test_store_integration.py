"""The settings store on a real redis-server: racing writers and the real CLI process."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import subprocess
import sys
from multiprocessing.queues import Queue
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from erp_sync.control.store import SettingsStore
from tests.support.reads import xentries
from tests.support.redisproc import RedisServer
from tests.support.snapshot import snapshot

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
WRITERS, WRITES_EACH = 8, 125


def _writer(url: str, prefix: str, writes: int, out: Queue[int]) -> None:
    store = SettingsStore(redis.Redis.from_url(url, decode_responses=True), KeySpace(prefix))
    done = 0
    for _ in range(writes):
        # Each write flips a value read inside the transaction: a lost update breaks the chain.
        _, changed = store.update_settings(
            "acme", "alice", lambda s: {"sync_project_job_costs": not s.sync_project_job_costs}
        )
        done += changed
    out.put(done)


def test_racing_admins_lose_no_update_and_audit_each_write_once(
    real: redis.Redis, redis_server: RedisServer, prefix: str
) -> None:
    store = SettingsStore(real, KeySpace(prefix))
    store.add_company("acme", "xero")
    store.grant("acme", "alice", "admin")
    results: Queue[int] = mp.get_context("fork").Queue()
    procs = [
        mp.get_context("fork").Process(
            target=_writer, args=(redis_server.url, prefix, WRITES_EACH, results)
        )
        for _ in range(WRITERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    successes = sum(results.get(timeout=5) for _ in procs)
    total = WRITERS * WRITES_EACH
    assert successes == total

    final = store.sync_settings("acme")
    assert final.version == 1 + total
    # An even number of flips ends where it started.
    assert final.settings.sync_project_job_costs is True
    updates = [e for e in store.audit("acme", 10_000) if e.action == "settings.update"]
    assert len(updates) == total
    chain = sorted(updates, key=lambda e: e.version or 0)
    assert [e.version for e in chain] == list(range(2, total + 2))
    for before, after in itertools.pairwise(chain):
        assert after.old == before.new
    versions = [int(m["version"]) for _, m in xentries(real, KeySpace(prefix).changes)]
    assert versions == list(range(1, total + 2))


def _cli(url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_SYNC_")}
    env.update(ERP_SYNC_REDIS_URL=url, ERP_SYNC_KEY_PREFIX=prefix)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_real_command_sets_and_shows_settings(
    real: redis.Redis, redis_server: RedisServer, prefix: str
) -> None:
    assert (
        _cli(
            redis_server.url, prefix, "company", "add", "acme", "--erp", "mri", "--admin", "al"
        ).returncode
        == 0
    )
    done = _cli(
        redis_server.url,
        prefix,
        "settings",
        "set",
        "acme",
        "--as",
        "al",
        "--payments-frequency",
        "hourly",
        "--no-wait",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["settings"]["payments_for_synced_invoices"] == "hourly"
    before = snapshot(real, prefix)
    refused = _cli(
        redis_server.url, prefix, "settings", "set", "acme", "--as", "eve", "--no-refresh-jobs"
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: user 'eve' has 'none' on the ERP Integrations tool of 'acme'; 'admin' is required"
    ]
    after = snapshot(real, prefix)
    [denied] = after.pop(KeySpace(prefix).denied("acme"))  # audited as refused, nothing else
    assert json.loads(denied)["actor"] == "eve"
    assert after == before


def test_the_real_command_reports_redis_down_in_one_line(tmp_path: Path) -> None:
    done = _cli("redis://127.0.0.1:1/0", "x", "settings", "show", "acme")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach Redis at redis://127.0.0.1:1/0")
    assert len(done.stderr.strip().splitlines()) == 1
