"""PostgreSQL fixtures (imported into ``tests/conftest.py``): one server per pytest worker, one
fresh database per test, so tests share the startup cost but never each other's tables."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.pgproc import PostgresServer, start_postgres


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The worker's server (see ``start_postgres``). Never skipped: if PostgreSQL cannot start,
    every test that needs it errors with the reason."""
    server = start_postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database of this test's own, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex}"
    url = postgres_server.create_database(name)
    yield url
    if not postgres_server.running:  # a "database down" test that failed before restarting it
        postgres_server.start_server()
    postgres_server.drop_database(name)
