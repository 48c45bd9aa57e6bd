"""Real Celery workers (subprocesses) syncing a company connected to the fake QuickBooks Online
server: one token refresh for the fleet, deferrals and retries through Celery, a revoked token
failing cleanly, and no secret in task messages or worker logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from config.env import get_settings
from config.keys import KeySpace
from config.models import RunRecord, SyncKind
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database, RecordStore
from erp_sync.throttle.ratelimit import CompanyLimit, set_company_limit
from tests.support.erp import Sender
from tests.support.fake_qbo.client import FakeQbo, Seed
from tests.support.qbo import (
    QboRealm,
    connect,
    leaked,
    new_realm,
    qbo_company,
    redis_dump,
    sync,
    tokens,
)
from tests.support.redisproc import RedisServer
from tests.support.workers import Start, Workers, finished

pytestmark = [pytest.mark.integration, pytest.mark.processes]


@pytest.fixture(scope="module")
def qbo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeQbo]:
    server = FakeQbo.start(tmp_path_factory.mktemp("fake_qbo"))
    yield server
    assert server.stop() == 0, server.log.read_text()


@pytest.fixture
def secret_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def worker_env(
    real: redis.Redis,
    redis_server: RedisServer,
    prefix: str,
    secret_key: str,
    env: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The workers' settings; this process gets the same key (its helpers decrypt too)."""
    env.setenv("ERP_SYNC_SECRET_KEY", secret_key)
    get_settings.cache_clear()
    return {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECRET_KEY": secret_key,
    }


@pytest.fixture
def sender(worker_env: dict[str, str]) -> Iterator[Sender]:
    s = Sender(worker_env)
    yield s
    s.close()


@pytest.fixture
def start(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Start]:
    workers = Workers(worker_env, tmp_path)
    yield workers.start
    workers.stop()


def connected_with_projects(
    client: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo, seed: Seed, n: int
) -> tuple[QboRealm, list[str], set[str]]:
    """Company ``acme`` connected to a realm, its first ``n`` QuickBooks Projects linked as
    Procore projects (read by an in-process jobs sync), and the access token it got dropped,
    so the workers start with an empty token cache; with every secret value so far."""
    realm = new_realm(qbo, seed)
    qbo_company(client, keys)
    connect(client, keys, realm)
    sync(client, keys, db, SyncKind.JOBS)
    projects = sorted(RecordStore(db, "acme").all("jobs"), key=int)[:n]
    for project in projects:
        SettingsStore(client, keys).add_project("acme", project)
    seen = {realm.client_secret, realm.refresh_token} | tokens(client, keys)
    client.delete(keys.access_token("acme"))
    return realm, projects, seen


def all_finished(client: redis.Redis, keys: KeySpace, task_ids: list[str]) -> list[RunRecord]:
    return [finished(client, keys, "acme", t, timeout=30) for t in task_ids]


def test_two_workers_syncing_two_projects_at_once_refresh_the_token_once_and_leak_nothing(
    real: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo, start: Start, sender: Sender
) -> None:
    realm, (p1, p2), seen = connected_with_projects(
        real,
        keys,
        db,
        qbo,
        Seed(vendors=50, projects=2, bills_per_project=2, payments_per_project=1),
        2,
    )
    qbo.reset_stats(realm.realm_id)
    qbo.switches(realm.realm_id, latency_ms=100)  # so the syncs overlap at the fake
    set_company_limit(real, keys, "acme", CompanyLimit(concurrency=4))
    # Both workers ready before the tasks arrive: with prefetch 1 each holds at most two, so
    # the syncs needing the first token run in both processes at once.
    w1, w2 = start("w1", concurrency=2), start("w2", concurrency=2)
    ids = [
        sender.send(SyncKind.JOB_COSTS, "acme", "c1", p1),
        sender.send(SyncKind.VENDORS, "acme", "v1"),
        sender.send(SyncKind.JOB_COSTS, "acme", "c2", p2),
        sender.send(SyncKind.PAYMENTS, "acme", "pay1", p1),
    ]
    records = all_finished(real, keys, ids)
    assert [r.status for r in records] == ["succeeded"] * 4, [r.error for r in records]
    stats = realm.stats()
    assert stats["refreshes"] == 1 and stats["refresh_failures"] == 0
    assert stats["throttled"] == 0
    store = RecordStore(db, "acme")
    assert len(store.all("job_costs", p1)) == len(store.all("job_costs", p2)) == 4
    assert len(store.all("vendors")) == 50 and len(store.all("payments", p1)) == 1
    assert "finished company=acme" in w1.output() and "finished company=acme" in w2.output()

    seen |= tokens(real, keys)
    assert len(seen) >= 6  # secret, three refresh tokens, two access tokens
    for name, text in {
        "redis afterwards": redis_dump(real, keys),
        "w1 log": w1.output(),
        "w2 log": w2.output(),
    }.items():
        assert leaked(text, seen) == [], name


def test_through_celery_a_429_defers_a_503_retries_and_a_revoked_token_fails_once(
    real: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo, start: Start, sender: Sender
) -> None:
    realm, _, seen = connected_with_projects(real, keys, db, qbo, Seed(vendors=30, projects=1), 0)
    qbo.switches(realm.realm_id, fail_next={"mode": "429", "count": 1, "retry_after": 1})
    qbo.fail_next(realm.realm_id, "503", 1)
    task_id = sender.send(SyncKind.VENDORS, "acme", "v1")
    queued = redis_dump(real, keys)  # the task message, before a worker takes it
    # The message is in the dump, its base64 body decoded (only the body holds "slot").
    assert '"id": "v1"' in queued and '{"company": "acme", "slot": ' in queued
    assert leaked(queued, seen) == []
    worker = start("w1", concurrency=2)
    record = finished(real, keys, "acme", task_id)
    assert (record.status, record.counts["created"]) == ("succeeded", 30), record.error
    assert record.attempt >= 2  # deferred and retried under the same task id
    assert realm.stats()["injected_failures"] == 2
    seen |= tokens(real, keys)

    qbo.switches(realm.realm_id, revoke_refresh_token=True, expire_access_tokens=True)
    failed = finished(real, keys, "acme", sender.send(SyncKind.VENDORS, "acme", "v2"))
    assert failed.status == "failed"
    assert "reconnect QuickBooks Online for acme" in (failed.error or "")
    asked = realm.stats()["token_requests"]
    again = finished(real, keys, "acme", sender.send(SyncKind.JOBS, "acme", "j2"))
    assert again.status == "failed" and again.attempt == 1
    assert "reconnect QuickBooks Online for acme" in (again.error or "")
    assert realm.stats()["token_requests"] == asked  # no retry storm at the token endpoint
    assert leaked(worker.output(), seen) == []
