"""``history``, ``sync-now``, ``demo``, ``sandbox``, ``ratelimit``, ``reconcile`` via CliRunner."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.runner import Runner
from tests.support.cli import Invoke, invoker
from tests.support.erp import ListPublisher, small_company
from tests.support.snapshot import snapshot

Sent = list[dict[str, Any]]


@pytest.fixture
def publisher() -> ListPublisher:
    return ListPublisher()


@pytest.fixture
def sent(publisher: ListPublisher) -> Sent:
    return publisher.sent


@pytest.fixture
def run(
    fake: redis.Redis, keys: KeySpace, env: pytest.MonkeyPatch, publisher: ListPublisher
) -> Invoke:
    small_company(fake, keys, "acme", projects=("p1", "p2"))
    small_company(fake, keys, "stone", erp="sage_100")
    small_company(fake, keys, "empty", projects=())
    fake.hset(keys.users("acme"), mapping={"sam": "standard", "rita": "read_only"})
    return invoker(fake, publisher)


def test_sync_now_queues_a_manual_task_per_project(run: Invoke, sent: Sent) -> None:
    code, out, _ = run("sync-now", "acme", "job_costs", "--as", "sam")
    assert code == 0, out
    assert [s["kwargs"]["project"] for s in sent] == ["p1", "p2"]
    first = sent[0]
    assert first["name"] == "tasks.project.sync_job_costs" and first["queue"] == "project"
    assert first["kwargs"]["trigger"] == "manual" and first["kwargs"]["company"] == "acme"
    assert first["task_id"].startswith("manual:acme:job_costs:p1:")
    assert len({s["task_id"] for s in sent}) == 2


def test_sync_now_of_a_company_sync(run: Invoke, sent: Sent) -> None:
    assert run("sync-now", "acme", "vendors", "--as", "alice")[0] == 0
    assert sent[0]["queue"] == "company" and "project" not in sent[0]["kwargs"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sync-now", "nope", "vendors", "--as", "alice"), "unknown company 'nope'"),
        (("sync-now", "acme", "vendors", "--as", "rita"), "'standard' is required"),
        (("sync-now", "acme", "vendors", "--as", "nobody"), "'standard' is required"),
        (("sync-now", "stone", "payments", "--as", "alice"), "sage_100 does not support"),
        (("sync-now", "acme", "payments", "--as", "alice", "--project", "zz"), "unknown project"),
        (("sync-now", "acme", "jobs", "--as", "alice", "--project", "p1"), "company-level"),
        (("sync-now", "empty", "job_costs", "--as", "alice"), "has no projects"),
        (("sync-now", "acme", "bananas", "--as", "alice"), "bananas"),
        (("history", "nope"), "unknown company"),
        (("history", "acme", "--limit", "0"), "limit"),
        (("sandbox", "set", "acme", "--transient-rate", "3"), "transient_rate"),
        (("sandbox", "set", "acme"), "nothing to change"),
        (("sandbox", "add-cost", "acme", "zz", "--amount", "5"), "unknown project"),
        (("sandbox", "add-cost", "acme", "p1", "--amount", "-5"), "amount must be positive"),
        (("sandbox", "add-vendor", "nope", "X"), "unknown company"),
        (("sandbox", "add-vendor", "acme", " "), "vendor name"),
        (("ratelimit", "set", "sap", "--rate", "1", "--burst", "1"), "unknown ERP"),
        (("ratelimit", "set", "xero", "--rate", "-1", "--burst", "1"), "rate"),
        (("reconcile", "acme", "--project", "zz"), "unknown project"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(
    run: Invoke, sent: Sent, fake: redis.Redis, keys: KeySpace, args: tuple[str, ...], message: str
) -> None:
    before = snapshot(fake, keys.prefix)
    code, _out, err = run(*args)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and message in err, err
    after = snapshot(fake, keys.prefix)
    if "is required" in message:  # a refusal: its one row in the security log, nothing else
        assert len(after.pop(keys.denied("acme"))) == 1
    assert after == before
    assert sent == []


def test_history_lists_runs_newest_first(run: Invoke, fake: redis.Redis, keys: KeySpace) -> None:
    runner = Runner(fake, keys)
    runner.execute(Delivery("t1", "acme", SyncKind.VENDORS, None, "2026-11-26T10:00:00Z"))
    runner.execute(Delivery("t2", "acme", SyncKind.PAYMENTS, "p1", "2026-11-26T11:00:00Z"))
    code, out, _ = run("history", "acme", "--json")
    shown = json.loads(out)
    assert [(r["task_id"], r["kind"], r["project"], r["status"]) for r in shown] == [
        ("t2", "payments", "p1", "succeeded"),
        ("t1", "vendors", None, "succeeded"),
    ]
    assert json.loads(run("history", "acme", "--json", "--limit", "1")[1])[0]["task_id"] == "t2"
    code, out, _ = run("history", "acme")
    assert code == 0 and "created=30" in out


def test_demo_seeds_several_erps_and_is_idempotent(
    run: Invoke, fake: redis.Redis, keys: KeySpace
) -> None:
    code, out, _ = run("demo", "--companies", "3", "--projects", "2")
    assert code == 0
    assert "admin demo-01-admin" in out and "demo-03" in out
    companies = json.loads(run("company", "list", "--json")[1])
    erps = {c["erp"] for c in companies if c["id"].startswith("demo-")}
    assert len(erps) == 3
    assert fake.hget(keys.users("demo-02"), "demo-02-admin") == "admin"
    assert fake.hlen(keys.erp("demo-01", "vendors")) == 300
    before = snapshot(fake, keys.prefix)
    assert run("demo", "--companies", "3", "--projects", "2")[1] == out
    assert snapshot(fake, keys.prefix) == before


def test_sandbox_changes_show_up_after_a_sync(
    run: Invoke, fake: redis.Redis, keys: KeySpace
) -> None:
    runner = Runner(fake, keys)
    runner.execute(Delivery("t1", "acme", SyncKind.JOB_COSTS, "p1", "s"))
    code, out, _ = run("sandbox", "add-cost", "acme", "p1", "--amount", "12.5")
    assert code == 0
    cost = json.loads(out)
    assert cost["amount_cents"] == 1250
    assert run("reconcile", "acme", "--project", "p1", "--json")[0] == 0
    drift = json.loads(run("reconcile", "acme", "--project", "p1", "--json")[1])
    assert drift["job_costs:p1"]["missing"] == [cost["id"]]
    record = runner.execute(Delivery("t2", "acme", SyncKind.JOB_COSTS, "p1", "s")).record
    assert record is not None and record.counts["created"] == 1
    drift = json.loads(run("reconcile", "acme", "--project", "p1", "--json")[1])
    # Vendors, jobs and payments were never synced; the job cost collections match the ERP.
    assert drift["vendors"]["missing"]
    assert [name for name, d in drift.items() if any(d.values())] == [
        "jobs",
        "payments:p1",
        "vendors",
    ]


def test_sandbox_set_and_ratelimit_set(run: Invoke) -> None:
    code, out, _ = run(
        "sandbox", "set", "acme", "--latency-ms", "50", "--fail-next", "2", "--fail-kind", "timeout"
    )
    assert code == 0
    shown = json.loads(out)
    assert shown["config"]["latency_ms"] == 50 and shown["fail_next"] == 2
    assert run("ratelimit", "set", "xero", "--rate", "2", "--burst", "3")[0] == 0
    limits = json.loads(run("ratelimit", "show", "--json")[1])
    assert limits["xero"] == {"rate": 2.0, "burst": 3.0, "concurrency": 2, "requests": None}
