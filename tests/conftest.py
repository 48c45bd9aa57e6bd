"""Shared fixtures: fakeredis for unit tests, a private real redis-server for integration tests.

Each test gets its own key prefix, so tests sharing the session's redis-server never see each
other's keys. In CI (``CI`` set) a missing redis-server is a failure, never a silent skip.

Running the tests (markers are declared in pyproject.toml):

    .venv/bin/pytest                                  # everything, as CI runs it
    .venv/bin/pytest -m "not slow and not chaos"      # a developer's quick run
    .venv/bin/pytest -m "not processes"               # nothing that starts Celery processes
    .venv/bin/pytest --durations=30                   # which tests take the time

``slow`` marks the long hypothesis fuzzers and the chaos runs; ``chaos`` the short runs of
``tests/support/chaos.py`` (the long ones: ``.venv/bin/python -m bench.chaos``); ``processes``
tests that start real celery beat / worker / Flower subprocesses; ``integration`` tests that need
a real redis-server. Process tests wait on what they can observe (``tests.support.procs.
wait_until``: Redis state, log lines, run history); a fixed sleep is only for time that must pass,
and says so.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from config.env import get_settings
from config.keys import KeySpace
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database, database
from erp_sync.infra.egress import policy as egress_policy
from tests.support.pgfixtures import pg_url, postgres_server
from tests.support.procs import TEST_OUTBOUND_ALLOW
from tests.support.redisproc import RedisServer, require_redis_server

__all__ = ["pg_url", "postgres_server"]  # fixtures, for every test module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files that start real processes first, most such tests first: ``scripts/test.sh`` hands
    whole files to the xdist workers in this order, so the long files start at once and the
    short ones fill the gaps at the end, instead of one long file starting last."""
    heavy: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("processes") is not None:
            heavy[item.path.name] = heavy.get(item.path.name, 0) + 1
    items.sort(key=lambda item: -heavy.get(item.path.name, 0))  # stable: order within a file


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def keys(prefix: str) -> KeySpace:
    return KeySpace(prefix)


@pytest.fixture
def fake() -> redis.Redis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def store(fake: redis.Redis, keys: KeySpace) -> SettingsStore:
    return SettingsStore(fake, keys)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (tests isolate by key prefix)."""
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.close_clients()
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that stop, kill or restart it."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.close_clients()
    server.kill()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database at the schema's head, migrated once and copied for every test."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    db.dispose()  # closes the last connection: SQLite folds the WAL back into the file
    return path


@pytest.fixture(autouse=True)
def outbound_allow(monkeypatch: pytest.MonkeyPatch) -> str:
    """Tests deliver to receivers and a fake QuickBooks on loopback, which the default policy
    refuses: the suite opts in explicitly, as an operator would (ERP_SYNC_OUTBOUND_ALLOW,
    inherited by the processes it starts). A test of the default deletes it."""
    monkeypatch.setenv("ERP_SYNC_OUTBOUND_ALLOW", TEST_OUTBOUND_ALLOW)
    get_settings.cache_clear()
    return TEST_OUTBOUND_ALLOW


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing a webhook or ERP URL resolves its host name (``egress.policy.resolve``); in the
    tests every name is unknown, so no test asks a real DNS server (machines without one would
    wait out the resolver) and a result never depends on the machine's network. Tests of the
    resolution pass their own resolver or patch this one."""

    def unknown(host: str, port: int, timeout: float = 5.0) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, f"no DNS in the tests ({host[:60]})")

    monkeypatch.setattr(egress_policy, "resolve", unknown)


@pytest.fixture(autouse=True)
def db_url(sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test's own SQLite database (ERP_SYNC_DATABASE_URL, inherited by the processes it
    starts), so no test writes to a developer's default database or to another test's."""
    path = tmp_path / "erp_sync.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    monkeypatch.setenv("ERP_SYNC_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    database(url).dispose()


@pytest.fixture
def db(db_url: str) -> Database:
    """The test's SQLite database (at the schema's head)."""
    return database(db_url)


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    """A PostgreSQL database of this test's own, migrated to the head."""
    db = Database(pg_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest) -> Database:
    """The store's tests run on both dialects: the test's SQLite, then a real PostgreSQL."""
    name = "db" if request.param == "sqlite" else "pg_db"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, prefix: str, db_url: str, outbound_allow: str
) -> Iterator[pytest.MonkeyPatch]:
    """Process settings isolated for this test (prefix, database and the loopback opt-in set;
    cache cleared)."""
    for name in list(os.environ):
        if name.startswith("ERP_SYNC_") and not name.startswith("ERP_SYNC_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ERP_SYNC_KEY_PREFIX", prefix)
    monkeypatch.setenv("ERP_SYNC_DATABASE_URL", db_url)
    monkeypatch.setenv("ERP_SYNC_OUTBOUND_ALLOW", outbound_allow)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture
def real(redis_server: RedisServer, env: pytest.MonkeyPatch) -> redis.Redis:
    """A client on the session's real redis-server, with the env pointing at it."""
    env.setenv("ERP_SYNC_REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    return redis_server.client()
