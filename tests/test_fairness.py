"""Fair workers: a sync that must wait gives its slot back, so a slow neighbour never delays
a healthy company; a live run is never run twice at once, even past the visibility timeout.

Unit level (fakeredis): a rate-limited sync is deferred and resumes from the page it reached.
Real processes: a real worker and redis-server, a throttled company with a backlog of syncs
and a healthy company published behind it; a run slower than the visibility timeout.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from config.models import RunRecord, SyncKind
from erp_sync.db import RecordStore, database
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.records import RunRecords
from erp_sync.runs.runner import Runner
from erp_sync.runs.syncs import RESUME
from erp_sync.throttle.ratelimit import CompanyLimit, set_company_limit
from tests.support import procs
from tests.support.erp import Sender, small_company
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs

RECEIVED = re.compile(r"Task [\w.]+\[(sync:\S+)\] received")


def delivery(n: int = 1, deferrals: int = 0) -> Delivery:
    return Delivery(
        task_id=f"sync:acme:vendors:-:{n}",
        company="acme",
        kind=SyncKind.VENDORS,
        project=None,
        slot="2026-11-26T10:00:00Z",
        deferrals=deferrals,
    )


def test_a_throttled_sync_is_deferred_and_resumes_from_the_page_it_reached(
    fake: redis.Redis, keys: KeySpace
) -> None:
    small_company(fake, keys, vendors=30, page_size=5)  # several pages, one call each
    small_company(fake, keys, "ref", vendors=30, page_size=5)  # the same, never throttled
    Runner(fake, keys).execute(
        Delivery(task_id="ref", company="ref", kind=SyncKind.VENDORS, project=None, slot="x")
    )
    pages = fake.llen(keys.erp_calls("ref"))
    set_company_limit(fake, keys, "acme", CompanyLimit(rate=0.5, burst=2))
    runner = Runner(fake, keys, rng=random.Random(1), defer_after=0.0)
    outcome = runner.execute(delivery())
    assert outcome.defer_in is not None and 1.5 < outcome.defer_in < 2.5  # one token per 2 s
    marks = fake.get(keys.cursor("acme", "vendors", None))
    assert marks is not None and f'"{RESUME}"' in marks
    assert fake.llen(keys.erp_calls("acme")) == 2  # the burst, then it stopped asking
    fake.delete(keys.rate_limit("acme"))  # time passes: the bucket is full again
    deferrals = 1
    while (outcome := runner.execute(delivery(deferrals=deferrals))).defer_in is not None:
        fake.delete(keys.rate_limit("acme"))
        deferrals += 1
    record = outcome.record
    assert record is not None and record.status == "succeeded"
    assert fake.llen(keys.erp_calls("acme")) == pages  # every page read once, none re-read
    assert len(RecordStore(database(), "acme").all("vendors")) == 30
    assert RESUME not in (fake.get(keys.cursor("acme", "vendors", None)) or "")


def test_a_sync_over_its_companys_concurrency_cap_is_deferred(
    fake: redis.Redis, keys: KeySpace
) -> None:
    small_company(fake, keys)
    set_company_limit(fake, keys, "acme", CompanyLimit(concurrency=1))
    fake.zadd(keys.running("acme"), {"another-task": 10**15})  # one sync of acme runs
    outcome = Runner(fake, keys, rng=random.Random(1)).execute(delivery())
    assert outcome.defer_in is not None and outcome.record is not None
    deferred = RunRecords(fake, keys).get("acme", "sync:acme:vendors:-:1")
    assert deferred is not None and "concurrency cap (1 of 1 running)" in (deferred.error or "")
    fake.delete(keys.running("acme"))
    record = Runner(fake, keys).execute(delivery(deferrals=1)).record
    assert record is not None and record.status == "succeeded"


def started_late(runs: list[RunRecord], published: dict[str, float]) -> list[float]:
    return sorted(r.started_at.timestamp() - published[r.task_id] for r in runs)


# How late a worker thread may wake from the bucket's sleep on a loaded 2-core machine (0.13 s
# seen). The bucket spaces its grants exactly; the ERP sees each call a wake-up later, so one gap
# can shrink by this much, but no window of calls can: the allowance is paid once per window.
WAKE_UP = 0.3


def assert_spaced(calls: list[float], spacing: float, jitter: float) -> None:
    """Every window of the ERP's calls respects the limit: the calls i..j span at least
    ``(j - i) * spacing`` seconds, less one thread wake-up (``jitter``) at the window's start.
    Two calls let through together, or a rate a little too high, fail over a long window."""
    for i, j in itertools.combinations(range(len(calls)), 2):
        need = (j - i) * spacing - jitter
        assert calls[j] - calls[i] >= need, (
            f"the slow company's ERP limit was exceeded: calls {i}..{j} span "
            f"{calls[j] - calls[i]:.2f} s, at least {need:.2f} s needed ({calls})"
        )


def test_the_spacing_check_refuses_a_burst_and_a_rate_above_the_limit() -> None:
    steady = [float(n) for n in range(12)]
    assert_spaced(steady, 0.98, WAKE_UP)
    late_one = [*steady[:5], 5.13, *steady[6:]]  # one call woke 0.13 s late
    assert_spaced(late_one, 0.98, WAKE_UP)
    with pytest.raises(AssertionError):
        assert_spaced([0.0, 0.05, *steady[2:]], 0.98, WAKE_UP)  # two together
    with pytest.raises(AssertionError):
        assert_spaced([n * 0.9 for n in range(12)], 0.98, WAKE_UP)  # 11 % too fast


@pytest.mark.integration
@pytest.mark.processes
def test_a_slow_neighbour_does_not_delay_a_healthy_company(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    client, keys = redis_server.client(), KeySpace(prefix)
    env = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix}
    slow_projects = tuple(f"p{n:02d}" for n in range(12))
    small_company(client, keys, "slow", projects=slow_projects)
    small_company(client, keys, "fine", projects=tuple(f"q{n}" for n in range(8)))
    set_company_limit(client, keys, "slow", CompanyLimit(rate=1, burst=1))  # 1 call/s
    worker = procs.worker("w", env, tmp_path, queues="project", concurrency=4)
    sender = Sender(env)
    published: dict[str, float] = {}

    def send(company: str, project: str) -> None:
        task_id = f"sync:{company}:payments:{project}:{len(published)}"
        published[task_id] = client.time()[0] + client.time()[1] / 1e6
        sender.send(SyncKind.PAYMENTS, company, task_id, project)

    try:
        worker.wait_for("ready", 60)
        for project in slow_projects:  # all due at once, ahead of the healthy company
            send("slow", project)
        procs.wait_until(
            lambda: client.llen(keys.queue("project")) == 0,
            30,
            "the worker never took the slow company's backlog",
        )
        for project in ("q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7"):
            send("fine", project)

        def finished(company: str) -> list[RunRecord]:
            return [
                r
                for r in recent_runs(RunRecords(client, keys), company, 500)
                if r.status in ("succeeded", "failed", "skipped")
            ]

        procs.wait_until(
            lambda: len(finished("slow")) == len(slow_projects),
            120,
            f"the slow company's syncs did not all complete:\n{worker.output()[-3000:]}",
        )
    finally:
        sender.close()
        worker.stop()
    fine, slow = finished("fine"), finished("slow")
    assert [r.status for r in fine] == ["succeeded"] * 8
    assert [r.status for r in slow] == ["succeeded"] * len(slow_projects)
    last_slow_started = max(r.started_at.timestamp() for r in slow)
    # The healthy syncs did not queue behind the slow company's backlog: each one started
    # before the slow company's last sync even began (it needs ~12 s at 1 call/s).
    assert all(r.started_at.timestamp() < last_slow_started for r in fine), started_late(
        fine, published
    )
    calls = sorted(float(t) for t in client.lrange(keys.erp_calls("slow"), 0, -1))
    assert len(calls) == len(slow_projects)  # one call per sync: none ran twice
    assert_spaced(calls, 0.98, WAKE_UP)
    received = set(RECEIVED.findall(worker.output()))
    assert received == set(published)  # none lost (a deferral re-receives the same id)
    assert "deferred company=slow" in worker.output()


@pytest.mark.integration
@pytest.mark.processes
def test_a_run_that_outlives_the_visibility_timeout_never_runs_beside_its_redelivery(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    client, keys = redis_server.client(), KeySpace(prefix)
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_TASK_SOFT_TIME_LIMIT": "0.5",
        "ERP_SYNC_TASK_TIME_LIMIT": "1",
        "ERP_SYNC_VISIBILITY_TIMEOUT": "2",
    }
    data = small_company(client, keys, "acme", vendors=5, page_size=100)
    data.configure("acme", latency_ms=6000)  # one call, three visibility timeouts long
    workers = [
        procs.worker(f"w{n}", env, tmp_path, queues="company", concurrency=2) for n in (1, 2)
    ]
    sender = Sender(env)
    done: Callable[[], bool] = lambda: bool(  # noqa: E731
        (r := RunRecords(client, keys).get("acme", "sync:acme:vendors:-:1")) is not None
        and r.status == "succeeded"
    )
    try:
        for worker in workers:
            worker.wait_for("ready", 60)
        sender.send(SyncKind.VENDORS, "acme", "sync:acme:vendors:-:1")
        procs.wait_until(done, 60, "the slow run never finished")
        procs.wait_until(lambda: client.llen(keys.queue("company")) == 0, 30, "queue not empty")
    finally:
        sender.close()
        for worker in workers:
            worker.stop()
    output = "".join(w.output() for w in workers)
    assert output.count("sync:acme:vendors:-:1] received") >= 2, "never redelivered"
    assert client.llen(keys.erp_calls("acme")) == 1  # the redelivery never ran beside it
    assert "its earlier delivery, which is still running" in output


@pytest.mark.integration
@pytest.mark.processes
def test_an_erps_retry_after_and_the_company_cap_defer_on_a_real_worker(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    client, keys = redis_server.client(), KeySpace(prefix)
    env = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix}
    data = small_company(client, keys, "acme", fail_kind="rate_limited", retry_after=0.3)
    data.fail_next("acme", 2)  # the ERP answers 429, Retry-After 0.3 s, twice
    set_company_limit(client, keys, "acme", CompanyLimit(concurrency=1))
    worker = procs.worker("w", env, tmp_path, queues="company", concurrency=4)
    sender = Sender(env)
    try:
        worker.wait_for("ready", 60)
        seconds, micros = client.time()  # another sync of acme runs for 1.5 s more (Redis ms)
        client.zadd(keys.running("acme"), {"someone-else": seconds * 1000 + micros // 1000 + 1500})
        sender.send(SyncKind.VENDORS, "acme", "sync:acme:vendors:-:1")
        procs.wait_until(
            lambda: (
                (r := RunRecords(client, keys).get("acme", "sync:acme:vendors:-:1")) is not None
                and r.status == "succeeded"
            ),
            60,
            f"the sync never succeeded:\n{worker.output()[-3000:]}",
        )
    finally:
        sender.close()
        worker.stop()
    record = RunRecords(client, keys).get("acme", "sync:acme:vendors:-:1")
    assert record is not None and record.attempt == 1  # deferrals are not attempts or retries
    output = worker.output()
    assert "for the company's concurrency cap (1 of 1 running)" in output  # held by the cap
    assert output.count("for the ERP (RateLimited") == 2  # then two Retry-Afters
    deferrals = output.count("deferred company=acme")
    assert len(RECEIVED.findall(output)) == 1 + deferrals  # each re-queue keeps the task id
