"""Bad and secret-bearing URLs in the environment, as an operator meets them: real ``manage.py``
and ``celery -A worker worker`` subprocesses.

A malformed ``ERP_SYNC_DATABASE_URL`` (a port that is not a number or out of range, a dialect
SQLAlchemy does not know, a SQLite file whose folder cannot be made) is one error line and a
non-zero exit, never a traceback, for ``db upgrade``, ``history`` and a worker's start. A
``?password=`` in ``ERP_SYNC_REDIS_URL`` or ``ERP_SYNC_DATABASE_URL`` never appears in the error
line about it (the ``user:password@`` form was masked before; the query form was not).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from erp_sync.control.store import SettingsStore
from tests.support import procs
from tests.support.manage import manage
from tests.support.redisproc import RedisServer, free_port

pytestmark = pytest.mark.integration

SECRET = f"pw-{uuid.uuid4().hex}"


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert done.stdout == "" and done.stderr.startswith("error: "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def bad_database_urls(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "a-file").write_text("not a folder\n")
    return {
        "port not a number": "sqlite://x:notaport/",
        "port out of range": "postgresql://h:99999/db",
        "unknown dialect": "nosuch://x",
        "driver not installed": "postgresql+nosuchdriver://h/db",
        "folder under a file": f"sqlite:///{tmp_path / 'a-file' / 'sub' / 'erp.db'}",
    }


CASES = ["port not a number", "port out of range", "unknown dialect", "driver not installed"]


@pytest.mark.parametrize("case", [*CASES, "folder under a file"])
def test_a_malformed_database_url_is_one_error_line_for_db_upgrade_and_history(
    real: redis.Redis, keys: KeySpace, redis_server: RedisServer, tmp_path: Path, case: str
) -> None:
    SettingsStore(real, keys).add_company("acme", "xero")
    url = bad_database_urls(tmp_path)[case]
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": keys.prefix,
        "ERP_SYNC_DATABASE_URL": url,
    }
    # One command per case, every command met across the cases (a process start each: ~1 s).
    commands = (["db", "upgrade"], ["db", "current"], ["history", "acme"])
    args = commands[[*CASES, "folder under a file"].index(case) % len(commands)]
    err = one_error_line(manage(env, *args))
    assert "ERP_SYNC_DATABASE_URL" in err or "database" in err, (args, err)
    assert not (tmp_path / "a-file" / "sub").exists()


@pytest.mark.processes
@pytest.mark.parametrize("case", ["unknown dialect", "folder under a file"])  # a parse, a mkdir
def test_a_worker_with_a_malformed_database_url_says_so_in_one_line_and_does_not_start(
    redis_server: RedisServer, prefix: str, tmp_path: Path, case: str
) -> None:
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_DATABASE_URL": bad_database_urls(tmp_path)[case],
    }
    worker = procs.worker("worker", env, tmp_path, pool="solo", concurrency=1)
    try:
        procs.wait_until(lambda: not worker.alive(), 90, "the worker kept running")
    finally:
        worker.stop()
    output = worker.output()
    assert worker.popen.returncode != 0
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "worker not started" in line]
    assert len(lines) == 1 and "ERP_SYNC_DATABASE_URL" in lines[0], output


def test_a_password_in_the_query_of_the_redis_url_never_shows_in_the_error_line(
    prefix: str,
) -> None:
    port = free_port()  # nothing listens there
    for url in (
        f"redis://127.0.0.1:{port}/0?password={SECRET}",
        f"redis://127.0.0.1:{port}/0?db=0&PASSWORD={SECRET}",
        f"redis://:{SECRET}@127.0.0.1:{port}/0",
    ):
        err = one_error_line(
            manage({"ERP_SYNC_REDIS_URL": url, "ERP_SYNC_KEY_PREFIX": prefix}, "company", "list")
        )
        assert "cannot reach Redis" in err or "invalid Redis URL" in err, err
        assert SECRET not in err, err
        assert "***" in err


def test_a_password_in_the_query_of_the_database_url_never_shows_in_the_error_line(
    real: redis.Redis, keys: KeySpace, redis_server: RedisServer
) -> None:
    SettingsStore(real, keys).add_company("acme", "xero")
    port = free_port()
    cases = (
        (f"postgresql+psycopg://erp@127.0.0.1:{port}/erp?password={SECRET}", ["db", "current"]),
        (
            f"postgresql+psycopg://erp:{SECRET}@127.0.0.1:{port}/erp?connect_timeout=2",
            ["history", "acme"],
        ),
        (f"postgresql+psycopg://erp@127.0.0.1:notaport/erp?password={SECRET}", ["history", "acme"]),
    )
    for url, args in cases:
        env = {
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": keys.prefix,
            "ERP_SYNC_DATABASE_URL": url,
        }
        err = one_error_line(manage(env, *args))
        assert SECRET not in err, err
