"""One delivery through the runner (locks, duplicates, skips, retries, history) on fakeredis."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import redis

from config.keys import KeySpace
from config.models import RunRecord, SyncKind, now
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.pause import Pauses
from erp_sync.control.store import SettingsStore
from erp_sync.errors import WorkerError
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.facts import RunFacts
from erp_sync.runs.locks import ANY_RUN, RunLock, StartReply, StartState, finish_arg
from erp_sync.runs.records import RunRecords
from erp_sync.runs.runner import MAX_REDELIVERIES, RetryPolicy, Runner
from tests.support.erp import small_company
from tests.support.runs import recent_runs


@pytest.fixture
def runner(fake: redis.Redis, keys: KeySpace) -> Runner:
    small_company(fake, keys)
    return Runner(fake, keys, rng=random.Random(1))


def delivery(
    task_id: str = "sync:acme:vendors:-:1",
    kind: SyncKind = SyncKind.VENDORS,
    project: str | None = None,
    *,
    trigger: str = "schedule",
    retries: int = 0,
    deferrals: int = 0,
) -> Delivery:
    return Delivery(
        task_id=task_id,
        company="acme",
        kind=kind,
        project=project,
        slot="2026-11-26T10:00:00Z",
        trigger=trigger,
        retries=retries,
        deferrals=deferrals,
    )


def test_a_run_is_recorded_with_every_field(runner: Runner) -> None:
    record = runner.execute(delivery()).record
    assert record is not None
    shown = record.model_dump(mode="json")
    assert shown["status"] == "succeeded" and shown["project"] is None
    assert shown["counts"] == {"created": 30, "updated": 0, "unchanged": 0, "deleted": 0}
    assert shown["scheduled_for"] == "2026-11-26T10:00:00Z"
    assert {
        "kind",
        "company",
        "started_at",
        "finished_at",
        "error",
        "task_id",
        "trigger",
        "attempt",
        "duration_ms",
    } <= set(shown)


def test_a_duplicated_delivery_runs_once(runner: Runner, fake: redis.Redis, keys: KeySpace) -> None:
    runner.execute(delivery())
    calls = fake.llen(keys.erp_calls("acme"))
    again = runner.execute(delivery())
    assert again.duplicate
    assert fake.llen(keys.erp_calls("acme")) == calls
    assert [r.status for r in recent_runs(runner.history, "acme")] == ["succeeded"]


def test_a_slot_arriving_during_a_run_is_skipped(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    fake.set(keys.run_lock("acme", "vendors", None), "sync:acme:vendors:-:0")
    record = runner.execute(delivery()).record
    assert record is not None and record.status == "skipped"
    assert "sync:acme:vendors:-:0" in (record.error or "")
    assert runner.execute(delivery()).duplicate  # a skip is final too


def test_a_redelivery_waits_while_the_run_still_holds_its_lock_then_takes_over(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    lock = keys.run_lock("acme", "vendors", None)
    # The first attempt's worker still renews its lock (a slow run, not a dead one).
    fake.set(lock, "sync:acme:vendors:-:1|first", px=4000)
    RunRecords(fake, keys).save(
        RunRecord(
            kind="vendors",
            company="acme",
            project=None,
            scheduled_for="x",
            started_at=now(),
            task_id="sync:acme:vendors:-:1",
        )
    )
    waiting = runner.execute(delivery())
    assert waiting.record is not None and waiting.record.status == "running"
    assert waiting.defer_in is not None and 3.5 < waiting.defer_in < 5
    first = runner.history.get("acme", "sync:acme:vendors:-:1")
    assert first is not None and first.status == "running"  # the live twin's, left alone
    assert fake.get(lock) == "sync:acme:vendors:-:1|first"  # never run beside it
    fake.delete(lock)  # its heartbeat stopped: the lock expired
    record = runner.execute(delivery(deferrals=1)).record
    assert record is not None and (record.status, record.attempt) == ("succeeded", 2)
    assert fake.get(lock) is None


def test_endless_redelivery_is_bounded(runner: Runner, fake: redis.Redis, keys: KeySpace) -> None:
    RunRecords(fake, keys).save(
        RunRecord(
            kind="vendors",
            company="acme",
            project=None,
            scheduled_for="x",
            started_at=now(),
            task_id="sync:acme:vendors:-:1",
            attempt=MAX_REDELIVERIES + 1,
        )
    )
    record = runner.execute(delivery()).record
    assert record is not None and record.status == "failed"
    assert "interrupted" in (record.error or "")


Change = Callable[[SettingsStore, redis.Redis, KeySpace], object]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s, f, k: f.delete(k.company("acme")), "no longer exists"),
        (
            lambda s, f, k: s.update_settings(
                "acme", "alice", {"refresh_erp_companies_list": False}
            ),
            "switched off",
        ),
    ],
)
def test_a_company_gone_or_sync_switched_off_is_skipped_with_a_reason(
    runner: Runner, fake: redis.Redis, keys: KeySpace, change: Change, reason: str
) -> None:
    change(SettingsStore(fake, keys), fake, keys)
    record = runner.execute(delivery()).record
    assert record is not None and record.status == "skipped"
    assert reason in (record.error or "")
    assert fake.llen(keys.erp_calls("acme")) == 0


def test_a_manual_run_ignores_the_schedule_switch(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    SettingsStore(fake, keys).update_settings("acme", "alice", {"refresh_erp_job_list": False})
    record = runner.execute(delivery("manual:1", SyncKind.JOBS, trigger="manual")).record
    assert record is not None and record.status == "succeeded"


def test_an_unknown_project_and_an_unsupported_sync_are_skipped(
    fake: redis.Redis, keys: KeySpace
) -> None:
    small_company(fake, keys, "acme")
    small_company(fake, keys, "steel", erp="cmic")
    runner = Runner(fake, keys)
    gone = runner.execute(delivery("t1", SyncKind.JOB_COSTS, "nope")).record
    assert gone is not None and "project 'nope' no longer exists" in (gone.error or "")
    unsupported = runner.execute(
        Delivery(task_id="t2", company="steel", kind=SyncKind.VENDORS, project=None, slot="s")
    ).record
    assert unsupported is not None and "cmic does not support" in (unsupported.error or "")


def test_the_erps_retry_after_defers_the_sync_without_spending_a_retry(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    from erp_sync.connectors.sandbox_data import SandboxData

    SandboxData(fake, keys).configure("acme", fail_kind="rate_limited", retry_after=7)
    SandboxData(fake, keys).fail_next("acme", 1)
    outcome = runner.execute(delivery())
    assert outcome.retry_in is None
    assert outcome.defer_in is not None and 7 <= outcome.defer_in <= 7.7
    # It still counts as running while it waits (a new slot is skipped), but gives its place
    # under the company's cap back.
    assert fake.get(keys.run_lock("acme", "vendors", None)) == "sync:acme:vendors:-:1|deferred"
    assert fake.zcard(keys.running("acme")) == 0
    slot = runner.execute(delivery("sync:acme:vendors:-:2")).record
    assert slot is not None and slot.status == "skipped"
    deferred = runner.history.get("acme", "sync:acme:vendors:-:1")
    assert deferred is not None and deferred.status == "deferred"
    assert "waiting for the ERP" in (deferred.error or "")
    record = runner.execute(delivery(deferrals=1)).record
    assert record is not None and (record.status, record.attempt) == ("succeeded", 1)


def test_a_server_error_asks_for_a_retry_with_backoff(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    from erp_sync.connectors.sandbox_data import SandboxData

    SandboxData(fake, keys).fail_next("acme", 1)
    outcome = runner.execute(delivery())
    assert outcome.defer_in is None and outcome.retry_in is not None
    assert fake.get(keys.run_lock("acme", "vendors", None)) is None
    record = runner.execute(delivery(retries=1)).record
    assert record is not None and (record.status, record.attempt) == ("succeeded", 2)


def test_a_retry_never_waits_longer_than_the_broker_can_hold_it(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    # Held past the visibility timeout, a retry would be redelivered while it still waits and
    # both copies (same task id) would run at once.
    from dataclasses import replace

    from erp_sync.connectors.sandbox_data import SandboxData

    SandboxData(fake, keys).configure("acme", fail_kind="rate_limited", retry_after=3000)
    SandboxData(fake, keys).fail_next("acme", 1)
    outcome = replace(runner, max_retry_delay=600.0).execute(delivery())
    assert outcome.defer_in == 600.0


def test_transient_errors_fail_the_run_when_retries_run_out(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    from erp_sync.connectors.sandbox_data import SandboxData

    SandboxData(fake, keys).fail_next("acme", 100)
    record = runner.execute(delivery(retries=runner.policy.max_retries)).record
    assert record is not None and record.status == "failed"
    assert "ErpServerError" in (record.error or "") and "gave up" in (record.error or "")


def test_a_permanent_error_fails_at_once_with_its_reason(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    from erp_sync.connectors.sandbox_data import SandboxData

    SandboxData(fake, keys).configure("acme", permanent="bad_credentials")
    outcome = runner.execute(delivery())
    assert outcome.retry_in is None and outcome.record is not None
    assert outcome.record.status == "failed"
    assert outcome.record.error == "BadCredentials: the ERP of 'acme' rejected the credentials"


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy, rng = RetryPolicy(base=1, cap=8), random.Random(3)
    for retries, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8)]):
        assert low <= policy.delay(retries, None, rng) <= high
    assert policy.delay(0, 30, rng) >= 30


def test_history_is_newest_first_and_capped(fake: redis.Redis, keys: KeySpace) -> None:
    history = RunRecords(fake, keys, cap=3)
    for n in range(5):
        history.save(
            RunRecord(
                kind="jobs",
                company="acme",
                project=None,
                scheduled_for=str(n),
                started_at=now(),
                task_id=f"t{n}",
            )
        )
    assert [r.task_id for r in recent_runs(history, "acme", 10)] == ["t4", "t3", "t2"]
    assert fake.hlen(keys.runs("acme")) == 3


def test_a_run_killed_by_the_hard_time_limit_is_recorded_failed(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    d = delivery()
    RunRecords(fake, keys).save(
        RunRecord(
            kind="vendors",
            company="acme",
            project=None,
            scheduled_for="x",
            started_at=now(),
            task_id=d.task_id,
        )
    )
    fake.set(keys.run_lock("acme", "vendors", None), f"{d.task_id}|killed-run")
    record = runner.killed(d, "hard time limit exceeded")
    assert record is not None and (record.status, record.error) == (
        "failed",
        "hard time limit exceeded",
    )
    assert fake.get(keys.run_lock("acme", "vendors", None)) is None
    assert runner.execute(d).duplicate
    assert runner.killed(d, "again") is None  # a finished record is never rewritten


@pytest.mark.integration
def test_the_task_closes_the_record_when_celery_kills_it(real: redis.Redis, keys: KeySpace) -> None:
    from celery.exceptions import TimeLimitExceeded

    import tasks
    from tasks.company import refresh_vendors

    small_company(real, keys)
    RunRecords(real, keys).save(
        RunRecord(
            kind="vendors",
            company="acme",
            project=None,
            scheduled_for="x",
            started_at=now(),
            task_id="k",
        )
    )
    tasks.runner.cache_clear()
    try:
        refresh_vendors.on_failure(
            TimeLimitExceeded(5), "k", (), {"company": "acme", "slot": "x"}, None
        )
    finally:
        tasks.runner.cache_clear()
    record = RunRecords(real, keys).get("acme", "k")
    assert record is not None and record.status == "failed"
    assert "hard time limit" in (record.error or "")


def test_a_slot_queued_before_a_pause_is_skipped_and_a_manual_run_is_not(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    Pauses(SettingsStore(fake, keys)).pause("acme", "alice", reason="ERP upgrade", until=None)
    record = runner.execute(delivery()).record
    assert record is not None and record.status == "skipped"
    assert record.error == "'acme' is paused (by alice; ERP upgrade)"
    manual = runner.execute(delivery("manual:acme:vendors:-:1", trigger="manual")).record
    assert manual is not None and manual.status == "succeeded"


def test_a_fleet_pause_skips_every_company(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    Pauses(SettingsStore(fake, keys)).pause(None, "ops", reason="incident", until=None)
    record = runner.execute(delivery()).record
    assert record is not None and record.status == "skipped"
    assert record.error is not None and "incident" in record.error


def test_a_job_cost_slot_of_a_project_opted_out_meanwhile_is_skipped(
    runner: Runner, fake: redis.Redis, keys: KeySpace
) -> None:
    Lifecycle(SettingsStore(fake, keys)).set_project("acme", "p1", "alice", sync_job_costs=False)
    costs = runner.execute(delivery("sync:acme:job_costs:p1:1", SyncKind.JOB_COSTS, "p1")).record
    assert costs is not None and costs.status == "skipped"
    assert costs.error == "project 'p1' is opted out of job-cost syncing"
    payments = runner.execute(delivery("sync:acme:payments:p1:1", SyncKind.PAYMENTS, "p1")).record
    assert payments is not None and payments.status == "succeeded"  # job costs only


# --- the runner's readings of the Lua scripts' replies and of the lock value ----------------

FACTS = [0, "", '{"erp": "xero"}', "", 1, "", "C", "", "1700000000", "250000", "", 0, '{"p": 1}']


def test_a_facts_reply_is_read_by_name() -> None:
    facts = RunFacts.parse(FACTS)
    assert (facts.executed, facts.previous, facts.company) == (False, None, '{"erp": "xero"}')
    assert (facts.project_exists, facts.erp_override, facts.company_override) == (True, None, "C")
    assert (facts.watermarks, facts.paused, facts.opted_out) == (None, None, False)
    assert facts.project == '{"p": 1}'
    assert facts.redis_time == 1_700_000_000.25


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (FACTS[:-1], "not 13 values"),
        ([*FACTS, 0], "not 13 values"),
        ("OK", "not 13 values"),
        ([2, *FACTS[1:]], "executed is 2"),
        ([*FACTS[:2], 7, *FACTS[3:]], "company is 7"),
        ([*FACTS[:8], "noon", *FACTS[9:]], "time_seconds"),
    ],
)
def test_a_facts_reply_of_another_shape_is_refused(reply: object, says: str) -> None:
    with pytest.raises(WorkerError, match=says):
        RunFacts.parse(reply)


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        (["ok"], StartReply(StartState.OK)),
        (["done"], StartReply(StartState.DONE)),
        (
            ["held", "sync:acme:vendors:-:0"],
            StartReply(StartState.HELD, holder="sync:acme:vendors:-:0"),
        ),
        (["alive", "4000"], StartReply(StartState.ALIVE, alive_ms=4000)),
        (["busy", "2"], StartReply(StartState.BUSY, running=2)),
    ],
)
def test_every_start_state_is_read_with_its_detail(reply: list[str], parsed: StartReply) -> None:
    assert StartReply.parse(reply) == parsed


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (["maybe"], "unknown state"),
        ([], "not a list"),
        ("ok", "not a list"),
        ([1], "not a list"),
        (["ok", "extra"], "wrong details"),
        (["held"], "wrong details"),
        (["busy", 2], "wrong details"),
        (["alive", "soon"], "not a number"),
    ],
)
def test_a_start_reply_the_runner_does_not_know_is_refused(reply: object, says: str) -> None:
    with pytest.raises(WorkerError, match=says):
        StartReply.parse(reply)


def test_an_unknown_start_state_runs_nothing(
    runner: Runner, fake: redis.Redis, keys: KeySpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read as "not a refusal", a state added to the script but not to the runner used to run the
    # sync without its lock.
    monkeypatch.setattr(runner, "_start", lambda **_: ["queued"])
    with pytest.raises(WorkerError, match="unknown state"):
        runner.execute(delivery())
    assert fake.llen(keys.erp_calls("acme")) == 0


def test_a_run_lock_round_trips_and_a_task_id_may_hold_the_separator() -> None:
    lock = RunLock.new("sync:acme:vendors:-:1")
    assert RunLock.parse(lock.format()) == lock and lock.format().startswith(lock.task_id + "|")
    assert RunLock.new(lock.task_id) != lock  # each delivery its own token
    assert RunLock.parse("odd|task|tok") == RunLock("odd|task", "tok")
    assert RunLock.parked("t1").format() == "t1|deferred"
    assert [finish_arg(lock), finish_arg(ANY_RUN), finish_arg(None)] == [lock.format(), "*", ""]


@pytest.mark.parametrize("value", ["no-separator", "|tok", "task|", ""])
def test_a_lock_value_run_lock_never_made_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not a run lock"):
        RunLock.parse(value)


def test_a_token_may_not_hold_the_separator() -> None:
    with pytest.raises(ValueError, match="not a run lock"):
        RunLock("t1", "a|b")
