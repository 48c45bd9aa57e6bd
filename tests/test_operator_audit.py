"""Every mutation leaves a row: operator changes in the operator log, refusals in the security
log; and the bad values an operator or admin can type get one line, not a traceback.

Issue 19 found ``ratelimit set/company``, ``sandbox`` changes and ``reconcile --fix`` leaving no
operator-log row, refused ``sync-now`` (and ``--force``) leaving no security-log row, a
400-digit duration printing a traceback and ``--rate 1e-300`` silently stopping a company.
Each test runs the CLI against a real redis-server: in-process, and as a real subprocess where
the promise is about what a process prints (no traceback).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
import redis

from config.keys import KeySpace
from tests.support.cli import invoker
from tests.support.manage import manage
from tests.support.redisproc import RedisServer
from tests.support.snapshot import snapshot

pytestmark = pytest.mark.integration

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(real: redis.Redis, redis_server: RedisServer, prefix: str, db_url: str) -> Run:
    """The CLI in-process (click's runner) on the real redis-server: each command's own code
    path, without a Python start-up per command (``subprocess_run`` is the real process)."""
    invoke = invoker(real)

    def do(*args: str) -> subprocess.CompletedProcess[str]:
        code, out, err = invoke(*args)
        return subprocess.CompletedProcess(list(args), code, out, err)

    for args in (
        ("company", "add", "acme", "--erp", "xero", "--admin", "al"),
        ("user", "grant", "acme", "rita", "--level", "read_only", "--as", "al"),
        ("user", "grant", "acme", "sam", "--level", "standard", "--as", "al"),
        ("project", "add", "acme", "p1"),
    ):
        done = do(*args)
        assert done.returncode == 0, done.stderr
    return do


@pytest.fixture
def subprocess_run(run: Run, redis_server: RedisServer, prefix: str, db_url: str) -> Run:
    """The management command as a real process, on the same Redis, key prefix and database."""
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_DATABASE_URL": db_url,
    }
    return lambda *args: manage(env, *args)


def operator_actions(run: Run) -> list[str]:
    done = run("operator-log", "--json")
    assert done.returncode == 0, done.stderr
    return [e["action"] for e in json.loads(done.stdout)]


def one_line(done: subprocess.CompletedProcess[str], text: str) -> None:
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert text in done.stderr, done.stderr


def test_rate_limit_overrides_are_in_the_operator_log_with_old_and_new(run: Run) -> None:
    assert run("ratelimit", "set", "xero", "--rate", "2", "--burst", "3").returncode == 0
    assert run("ratelimit", "company", "acme", "--concurrency", "1").returncode == 0
    assert run("ratelimit", "company", "acme").returncode == 0  # a read: no row
    rows = json.loads(run("operator-log", "--json").stdout)
    assert [r["action"] for r in rows[:2]] == ["ratelimit.company", "ratelimit.set"]
    fleet = rows[1]
    assert fleet["company"] == "*" and fleet["new"]["rate"] == 2 and fleet["old"]["rate"] == 1
    assert rows[0]["company"] == "acme" and rows[0]["new"] == {"concurrency": 1}
    assert all(r["os_user"] for r in rows[:2])


def test_sandbox_changes_and_reconcile_fix_are_in_the_operator_log(run: Run) -> None:
    small = (
        "--vendors",
        "5",
        "--cost-codes",
        "5",
        "--costs-per-job",
        "5",
        "--invoices-per-job",
        "2",
    )
    assert run("ratelimit", "company", "acme", "--rate", "1000", "--burst", "1000").returncode == 0
    assert run("sandbox", "set", "acme", *small).returncode == 0
    assert run("sandbox", "add-vendor", "acme", "Late Concrete").returncode == 0
    assert run("sandbox", "add-cost", "acme", "p1", "--amount", "12.50").returncode == 0
    assert run("sandbox", "show", "acme").returncode == 0  # a read: no row
    fixed = run("reconcile", "acme", "--fix", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert run("reconcile", "acme", "--json").returncode == 0  # without --fix: no row
    assert operator_actions(run)[:4] == [
        "reconcile.fix",
        "sandbox.add_cost",
        "sandbox.add_vendor",
        "sandbox.set",
    ]


def test_refused_sync_now_and_sync_now_force_are_in_the_security_log(run: Run) -> None:
    one_line(run("sync-now", "acme", "vendors", "--as", "rita"), "rita")
    assert run("pause", "acme", "--as", "al").returncode == 0
    one_line(run("sync-now", "acme", "vendors", "--as", "sam", "--force"), "sam")
    denied = json.loads(run("audit", "acme", "--denied", "--json").stdout)
    assert [(e["action"], e["actor"]) for e in denied[:2]] == [
        ("sync.force.denied", "sam"),
        ("sync.run.denied", "rita"),
    ]
    assert denied[1]["new"] == {"kind": "vendors", "project": None, "force": False}


@pytest.mark.parametrize("rate", ["1e-300", "0.001", "nan", "inf", "-1", "0"])
def test_a_rate_that_would_stop_a_company_is_refused_and_nothing_is_written(
    run: Run, real: redis.Redis, keys: KeySpace, rate: str
) -> None:
    before = snapshot(real, keys.prefix)
    one_line(run("ratelimit", "company", "acme", "--rate", rate), "rate")
    one_line(run("ratelimit", "set", "xero", "--rate", rate, "--burst", "1"), "rate")
    assert snapshot(real, keys.prefix) == before


@pytest.mark.parametrize(
    "args",
    [
        ["pause", "acme", "--as", "al", "--until", "9" * 400 + "m"],
        ["pause", "acme", "--as", "al", "--until", "1d" + "9" * 400 + "h"],
        ["history", "acme", "--since", "9" * 400 + "d"],
        ["history", "acme", "--since", "999999999w"],
    ],
)
def test_a_huge_duration_gets_one_line_not_a_traceback(
    subprocess_run: Run, real: redis.Redis, keys: KeySpace, args: list[str]
) -> None:
    before = snapshot(real, keys.prefix)
    one_line(subprocess_run(*args), args[-2])
    assert snapshot(real, keys.prefix) == before
