"""The private PostgreSQL server for tests (tests/support/pgproc.py) and its fixtures."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import pgproc
from tests.support.pgproc import ENV_URL, PostgresServer, start_postgres
from tests.support.redisproc import free_port

pytestmark = pytest.mark.integration


def scalar(url: str, *statements: str) -> object:
    """Run ``statements`` in one transaction; the last one's single value."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements[:-1]:
                conn.execute(sa.text(statement))
            return conn.execute(sa.text(statements[-1])).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def other_pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database("t_other")
    yield url
    postgres_server.drop_database("t_other")


def test_a_fresh_database_answers_sqlalchemy(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    assert scalar(pg_url, "select 1") == 1
    assert scalar(pg_url, "select count(*) from pg_tables where schemaname = 'public'") == 0


def test_two_test_databases_are_independent(pg_url: str, other_pg_url: str) -> None:
    assert pg_url != other_pg_url
    scalar(pg_url, "create table t (x int)", "insert into t values (1)", "select 1")
    assert scalar(pg_url, "select count(*) from t") == 1
    assert scalar(other_pg_url, "select to_regclass('t') is null") is True


def test_create_database_replaces_an_existing_one(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("t_again")
    scalar(url, "create table t (x int)", "select 1")
    url = postgres_server.create_database("t_again")
    assert scalar(url, "select to_regclass('t') is null") is True
    postgres_server.drop_database("t_again")


def test_data_survives_stop_server_and_start_server(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = postgres_server
    if not server.private:  # a shared ENV_URL server cannot be stopped: start one of our own
        monkeypatch.delenv(ENV_URL)
        server = start_postgres(tmp_path)
    try:
        url = server.create_database("t_restart")
        scalar(url, "create table t (x int)", "insert into t values (42)", "select 1")
        server.stop_server()
        with pytest.raises(sa.exc.OperationalError):
            scalar(url, "select 1")
        server.start_server()
        assert scalar(url, "select x from t") == 42
        server.drop_database("t_restart")
    finally:
        if server is not postgres_server:
            server.stop()


def test_an_unreachable_env_url_falls_back_to_a_private_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = free_port()
    monkeypatch.setenv(ENV_URL, f"postgresql://postgres@127.0.0.1:{dead}/postgres")
    started = time.monotonic()
    server = start_postgres(tmp_path)
    try:
        print(f"private cluster started in {time.monotonic() - started:.2f}s")
        assert server.private and server.port != dead
        assert scalar(server.create_database("t_fallback"), "select 1") == 1
    finally:
        server.stop()
    assert server.dir is not None and not server.dir.exists()


def test_a_reachable_env_url_is_shared_with_suffixed_databases(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stands the session's server in for a CI service: databases made on it get this run's
    suffix, ``stop`` drops them and leaves the server up."""
    monkeypatch.setenv(ENV_URL, postgres_server.admin_url)
    shared = start_postgres(tmp_path)
    assert not shared.private and shared.suffix
    url = shared.create_database("t_shared")
    assert sa.make_url(url).database == f"t_shared_{shared.suffix}"
    shared.stop()
    query = f"select count(*) from pg_database where datname = 't_shared_{shared.suffix}'"
    assert scalar(postgres_server.admin_url, query) == 0
    with pytest.raises(RuntimeError, match="shared"):
        shared.stop_server()


def test_missing_binaries_without_root_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgproc, "find_pg_bindir", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="apt-get install postgresql"):
        pgproc.require_postgres()
