"""One delivery of a sync task, from guard checks to the history record (no Celery here).

Order of checks, each a reason a run does not happen (``erp_sync.runs.delivery``):
1. The task id already completed (its ``executed`` marker is set): a duplicate delivery, nothing
   is done or recorded again.
2. The company is gone, the project is gone, the ERP does not support the sync, or (for scheduled
   runs) the sync is switched off in its settings: recorded ``skipped`` with the reason. Beat may
   have dispatched just before the change; manual runs ignore the on/off switch, which only
   governs the schedule.
3. The task id was started too often without finishing (lost workers): ``failed``, so a poison
   message cannot loop forever.
4. The run lock of (company, kind, project) (``run_start.lua``): held by another task id, the
   previous run is still going and this slot is recorded ``skipped``; held by this same task id,
   its earlier delivery still runs (its heartbeat keeps the lock alive, ``Heartbeat``) and this
   one is deferred until the lock is free, so the two never run together. A run whose worker
   died stops renewing: its lock expires within one TTL and the redelivery takes over. The
   company's concurrency cap is checked in the same step: over it, the delivery is deferred.

Then the sync runs. Success, a permanent error or an exhausted retry budget saves the final
record, sets the executed marker and releases the lock in one script, which is also where the
run checks that its company (and project) is still the tenant it started for
(``erp_sync.runs.tenant``): a run whose company was removed meanwhile writes no watermark, no
summary and no alert state, and is recorded ``failed`` ("company removed during the run").
The database row follows; a database that refuses it leaves the record waiting in Redis
(``erp_sync.runs.outbox``) until it accepts writes again. A sync that must wait (a
rate-limit token, the ERP's Retry-After) is *deferred*: it gives its worker slot back and comes
back under the same task id, resuming from the page it reached, without spending a retry. Any
other transient error releases the lock and asks the caller to retry after a backoff
(exponential with jitter, never sooner than ``retry_after``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import redis
from billiard.exceptions import SoftTimeLimitExceeded

from config.keys import KeySpace
from config.members import last_run_field
from config.models import Company, RunRecord
from erp_sync.connectors import Connector, connector_for
from erp_sync.connectors.throttled import throttled
from erp_sync.db import Database, RunLog, database
from erp_sync.errors import (
    DatabaseError,
    DatabaseUnavailable,
    MustWait,
    PermanentConnectorError,
    RateLimited,
    SyncTimedOut,
    TenantGone,
    TransientConnectorError,
    WorkerError,
)
from erp_sync.infra import lua
from erp_sync.infra.clock import RedisClock
from erp_sync.runs.delivery import Delivery, Facts, RunClock, attempt_of, skip_reason
from erp_sync.runs.facts import FactsReader
from erp_sync.runs.keepalive import Heartbeat
from erp_sync.runs.locks import (
    ANY_RUN,
    FinishLock,
    RunLock,
    StartReply,
    StartState,
    finish_arg,
)
from erp_sync.runs.outbox import RunOutbox
from erp_sync.runs.records import RunRecords
from erp_sync.runs.syncs import run_sync
from erp_sync.runs.tenant import Tenant, gone_error
from erp_sync.throttle.ratelimit import RateLimit, TokenBucket

MAX_REDELIVERIES = 3
log = logging.getLogger("erp_sync.worker")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient ERP errors: ``base * 2**retry`` capped, half of it random."""

    max_retries: int = 5
    base: float = 1.0
    cap: float = 60.0

    def delay(self, retries: int, retry_after: float | None, rng: random.Random) -> float:
        step = min(self.cap, self.base * 2**retries)
        backoff = step / 2 + rng.uniform(0, step / 2)
        if retry_after:
            # Never sooner than the ERP asked; a little spread so waiters do not return together.
            return float(max(backoff, retry_after * (1 + rng.uniform(0, 0.1))))
        return float(backoff)


@dataclass
class Outcome:
    record: RunRecord | None
    retry_in: float | None = None  # a transient error: retry after this many seconds
    defer_in: float | None = None  # it must wait: re-queue it (same task id) after this
    ticket: float | None = None  # with defer_in: its turn in the rate limit's queue
    duplicate: bool = False
    tenant: Tenant | None = None  # the company (and project) the run found: alerts check it


@dataclass
class Runner:
    """Runs deliveries against one deployment (client passed in; limits in seconds)."""

    client: redis.Redis
    keys: KeySpace
    soft_limit: float = 600.0
    # The run lock's TTL; a live run renews it every third of this (``Heartbeat``).
    lock_ttl: float = 30.0
    # A wait (rate limit, Retry-After) longer than this gives the worker slot back.
    defer_after: float = 1.0
    max_deferrals: int = 1000  # each deferral mid-sync keeps the pages already read
    # A live run's heartbeat stops after this long: a run hung on an ERP call that never returns
    # (thread pools cannot kill it) then stops blocking its later slots. Well past the broker's
    # visibility timeout, so a merely slow run never runs beside its redelivery.
    max_run: float = 14_400.0
    executed_ttl: float = 7200.0
    # A retry waits in the broker as an unacknowledged message: one held past the visibility
    # timeout is redelivered while the original still waits, and the two would run together.
    max_retry_delay: float = 2640.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    connector: Callable[[Company], Connector] | None = None
    # Where the syncs write and the history is kept (default: ERP_SYNC_DATABASE_URL's).
    db: Database | None = None

    def __post_init__(self) -> None:
        self.history = RunRecords(self.client, self.keys)  # each run's working record, in Redis
        self.database = self.db or database()
        self.runs = RunLog(self.database)
        self.outbox = RunOutbox(self.client, self.keys)
        self._start = lua.load(self.client, "run_start")
        self._finish = lua.load(self.client, "run_finish")
        self._release = lua.load(self.client, "run_release")
        self._park = lua.load(self.client, "run_park")
        self._heartbeat = lua.load(self.client, "run_heartbeat")
        self._facts = FactsReader(self.client, self.keys)

    def execute(self, d: Delivery) -> Outcome:
        """Run one delivery; a database that is down retries it like a transient ERP error."""
        try:
            return self._execute(d)
        except DatabaseError as exc:  # down, locked, or a schema changed under a running worker
            return self._database_down(d, exc)

    def _database_down(self, d: Delivery, exc: DatabaseError) -> Outcome:
        """The database failed: nothing of the page it was writing was committed, and the run's
        lock was given back. Retry with backoff; when the budget is spent the run is recorded
        failed where it can be (Redis: the database is the part that is down)."""
        previous = self.history.get(d.company, d.task_id)
        if d.retries >= self.policy.max_retries:
            log.error(
                "database unavailable company=%s project=%s sync=%s task_id=%s: %s "
                "(gave up after %s retries)",
                d.company,
                d.project or "-",
                d.kind.value,
                d.task_id,
                exc,
                d.retries,
            )
            at = RunClock(RedisClock(self.client).refresh())()
            record = previous or RunRecord(
                kind=d.kind.value,
                company=d.company,
                project=d.project,
                scheduled_for=d.slot,
                started_at=at,
                task_id=d.task_id,
                trigger=d.trigger,
            )
            # The record waits in Redis (outbox) until the database takes it.
            return Outcome(
                self._final(
                    record.finish(
                        "failed", error=f"{exc} (gave up after {d.retries} retries)", at=at
                    ),
                    d,
                    ANY_RUN,
                )
            )
        delay = min(self.policy.delay(d.retries, None, self.rng), self.max_retry_delay)
        if previous is not None:
            self.history.save(
                previous.model_copy(
                    update={"error": f"{exc}; retry {d.retries + 1} in {delay:.1f}s"}
                )
            )
        log.warning(
            "database unavailable company=%s project=%s sync=%s task_id=%s: %s; retry %s in %.1fs",
            d.company,
            d.project or "-",
            d.kind.value,
            d.task_id,
            exc,
            d.retries + 1,
            delay,
        )
        return Outcome(previous, retry_in=delay)

    def _execute(self, d: Delivery) -> Outcome:
        facts = self._facts.read(d)
        if facts.executed:
            return Outcome(facts.previous, duplicate=True)
        d = replace(d, tenant=facts.tenant)
        try:
            outcome = self._deliver(d, facts)
        except DatabaseError as exc:  # (here, so that its record too is checked for the tenant)
            outcome = self._database_down(d, exc)
        outcome.tenant = facts.tenant
        return outcome

    def _deliver(self, d: Delivery, facts: Facts) -> Outcome:
        # Timestamps on Redis's clock (the fleet's one clock), extended by the monotonic clock.
        clock = RunClock(facts.redis_time)
        record = RunRecord(
            kind=d.kind.value,
            company=d.company,
            project=d.project,
            scheduled_for=d.slot,
            started_at=clock(),
            task_id=d.task_id,
            trigger=d.trigger,
            attempt=attempt_of(facts.previous),
        )
        refused = self._refused(d, facts, record, clock)
        if refused is not None:
            return refused
        assert facts.limit is not None  # the company exists (checked by _refused)
        lock = RunLock.new(d.task_id)
        started = self._take(d, record, lock, facts.limit.concurrency)
        if started.state is not StartState.OK:
            return self._not_started(d, record, started, facts.limit.concurrency, clock)
        return self._run_locked(d, record, facts, lock, clock)

    def _refused(
        self, d: Delivery, facts: Facts, record: RunRecord, clock: RunClock
    ) -> Outcome | None:
        """Close a delivery that must not run, before it takes the lock: skipped with its reason,
        or failed when its task id was interrupted too often (a poison message must not loop).
        A lock this task id parked when it deferred earlier is freed with it."""
        parked = RunLock.parked(d.task_id)
        reason = skip_reason(d, facts)  # (always a reason when the company is gone)
        if reason:
            return Outcome(
                self._final(record.finish("skipped", error=reason, at=clock()), d, parked)
            )
        lost = record.attempt - 1 - d.retries
        if lost > MAX_REDELIVERIES:
            return Outcome(
                self._final(
                    record.finish(
                        "failed",
                        error=f"gave up: the run was interrupted {lost} times "
                        "(worker killed or lost mid-run)",
                        at=clock(),
                    ),
                    d,
                    parked,
                )
            )
        return None

    def _take(self, d: Delivery, record: RunRecord, lock: RunLock, cap: int) -> StartReply:
        """Take the run lock and a place under the company's ``cap``, recording the run as
        running, in one script; once taken, the record goes to the database too, and whatever
        fails there gives the lock back (nothing runs, so nothing renews it)."""
        started = StartReply.parse(
            self._start(
                keys=[
                    self._lock(d),
                    self.keys.runs(d.company),
                    self.keys.history(d.company),
                    self.keys.running(d.company),
                    self.keys.executed(d.task_id),
                ],
                args=[
                    lock.format(),
                    self._ttl_ms,
                    record.model_dump_json(),
                    self.history.cap,
                    cap,
                    d.task_id,
                    RunLock.parked(d.task_id).format(),
                ],
            )
        )
        if started.state is StartState.OK:
            try:
                self.runs.save(record)
            except BaseException:
                self._give_back(d, lock)
                raise
        return started

    def _not_started(
        self, d: Delivery, record: RunRecord, started: StartReply, cap: int, clock: RunClock
    ) -> Outcome:
        """What a delivery that did not get its lock becomes, by why it did not."""
        if started.state is StartState.DONE:  # its twin finished between our read and start
            return Outcome(self.history.get(d.company, d.task_id), duplicate=True)
        if started.state is StartState.HELD:
            why = f"the previous run ({started.holder}) is still running"
            return Outcome(self._final(record.finish("skipped", error=why, at=clock()), d))
        if started.state is StartState.ALIVE:
            # Never given up on: failing it would mark the task id executed under the feet of
            # its live twin, which finishes the slot itself.
            return self._defer(
                d,
                record,
                started.alive_ms / 1000 + 0.1,
                "its earlier delivery, which is still running",
                clock,
                None,
                may_give_up=False,
            )
        if started.state is StartState.BUSY:
            return self._defer(
                d,
                record,
                self._cap_wait(d),
                f"the company's concurrency cap ({started.running} of {cap} running)",
                clock,
                None,
            )
        raise WorkerError(f"run_start.lua's {started.state!r} is not a refusal")

    def _run_locked(
        self, d: Delivery, record: RunRecord, facts: Facts, lock: RunLock, clock: RunClock
    ) -> Outcome:
        """Run the sync under the lock just taken, its heartbeat keeping it alive; whatever
        escapes gives the lock back at once instead of leaving it to expire."""
        company, limit = facts.company, facts.limit
        assert company is not None and limit is not None  # the company exists (checked)
        try:
            with Heartbeat(
                self._heartbeat,
                self._lock(d),
                self.keys.running(d.company),
                lock,
                self._ttl_ms,
                self.max_run,
                tenant=self._tenant_keys(d),
            ) as beat:
                return self._run(
                    d,
                    record,
                    lambda: self._connector(company, limit, d.ticket),
                    facts.watermarks,
                    lock,
                    clock,
                    beat,
                )
        except BaseException:
            self._give_back(d, lock)
            raise

    def killed(self, d: Delivery, reason: str) -> RunRecord | None:
        """Record a run its worker killed (Celery's hard time limit) as failed, finally.

        Celery acknowledges such a task, so no redelivery will finish its record; without this it
        would stay ``running`` and hold its lock until the TTL.
        """
        previous = self.history.get(d.company, d.task_id)
        if previous is None or previous.status != "running":
            return None
        at = RunClock(RedisClock(self.client).refresh())()  # its other times are Redis time
        # (No redelivery will come; a database that is down gets the record later, outbox.)
        return self._final(previous.finish("failed", error=reason, at=at), d, lock=ANY_RUN)

    def _run(
        self,
        d: Delivery,
        record: RunRecord,
        connector: Callable[[], Connector],
        watermarks: str,
        lock: RunLock,
        clock: RunClock,
        beat: Heartbeat,
    ) -> Outcome:
        try:
            # Made inside: a connector that cannot be built (a connection whose credentials
            # were refused) fails the run like any other connector error.
            counts = run_sync(
                self.client,
                self.keys,
                self.database,
                d.company,
                d.kind,
                d.project,
                connector(),
                deadline=time.monotonic() + self.soft_limit,
                watermarks=watermarks,
                lost=lambda: beat.lost,
                tenant=d.tenant,
            )
        except DatabaseError:
            raise  # execute() retries it (the heartbeat's exit released the lock)
        except TenantGone as exc:  # removed while it ran: nothing of it was stored
            return Outcome(
                self._final(record.finish("failed", error=str(exc), at=clock()), d, lock)
            )
        except MustWait as exc:
            return self._defer(d, record, exc.seconds, exc.why, clock, lock, exc.ticket)
        except RateLimited as exc:  # the ERP said when to come back: wait without the slot
            wait = exc.retry_after or self.policy.delay(d.deferrals, None, self.rng)
            return self._defer(d, record, wait, f"the ERP ({_describe(exc)})", clock, lock)
        except TransientConnectorError as exc:
            if d.retries >= self.policy.max_retries:
                return Outcome(
                    self._final(
                        record.finish(
                            "failed",
                            error=f"{_describe(exc)} (gave up after {d.retries} retries)",
                            at=clock(),
                        ),
                        d,
                        lock,
                    )
                )
            delay = min(
                self.policy.delay(d.retries, exc.retry_after, self.rng), self.max_retry_delay
            )
            self._note(
                record.model_copy(
                    update={"error": f"{_describe(exc)}; retry {d.retries + 1} in {delay:.1f}s"}
                )
            )
            # The retry takes the lock again; a slot arriving meanwhile may run (not overlap).
            self._give_back(d, lock)
            return Outcome(record, retry_in=delay)
        except (PermanentConnectorError, SyncTimedOut) as exc:
            return Outcome(
                self._final(record.finish("failed", error=_describe(exc), at=clock()), d, lock)
            )
        except SoftTimeLimitExceeded:  # raised inside prefork children by Celery's soft limit
            return Outcome(
                self._final(
                    record.finish(
                        "failed",
                        error=f"soft time limit exceeded after {self.soft_limit:g}s",
                        at=clock(),
                    ),
                    d,
                    lock,
                )
            )
        except Exception as exc:
            self._final(
                record.finish("failed", error=f"internal error: {_describe(exc)}", at=clock()),
                d,
                lock,
            )
            raise
        return Outcome(
            self._final(record.finish("succeeded", counts=counts.as_dict(), at=clock()), d, lock)
        )

    def _defer(
        self,
        d: Delivery,
        record: RunRecord,
        seconds: float,
        why: str,
        clock: RunClock,
        lock: RunLock | None,
        ticket: float | None = None,
        may_give_up: bool = True,
    ) -> Outcome:
        """Give the worker slot back: re-queued under the same task id after ``seconds``.

        With a ``ticket`` (a place in the rate limit's queue) it returns exactly on its turn;
        other waits get a little jitter so that waiters do not return together.
        """
        if d.deferrals >= self.max_deferrals and may_give_up:
            return Outcome(
                self._final(
                    record.finish(
                        "failed",
                        error=f"gave up after deferring {d.deferrals} times (waiting for {why})",
                        at=clock(),
                    ),
                    d,
                    lock,
                )
            )
        spread = 0.0 if ticket else self.rng.uniform(0, 0.1)
        delay = min(max(seconds, 0.05) * (1 + spread), self.max_retry_delay)
        if may_give_up:  # (a twin that still runs owns the record: leave it alone)
            self._note(
                record.finish(
                    "deferred", at=clock(), error=f"deferred {delay:.1f}s: waiting for {why}"
                )
            )
        if lock is not None:
            # Parked, not released: the sync still counts as running while it waits, so a
            # slot arriving meanwhile is skipped; only this task id takes the lock back.
            self._park(
                keys=[self._lock(d), self.keys.running(d.company)],
                args=[
                    lock.format(),
                    d.task_id,
                    int((delay + self.lock_ttl) * 1000),
                    RunLock.parked(d.task_id).format(),
                ],
            )
        log.info(
            "deferred company=%s project=%s sync=%s slot=%s task_id=%s wait=%.1fs for %s",
            d.company,
            d.project or "-",
            d.kind.value,
            d.slot,
            d.task_id,
            delay,
            why,
        )
        return Outcome(record, defer_in=delay, ticket=ticket)

    def _cap_wait(self, d: Delivery) -> float:
        """How long a sync over its company's cap waits: short at first, then backing off."""
        return float(min(15.0, 0.5 * 2 ** min(d.deferrals, 5)))

    def _connector(self, company: Company, limit: RateLimit, ticket: float | None) -> Connector:
        inner = (
            self.connector(company)
            if self.connector
            else connector_for(self.client, self.keys, company)
        )
        return throttled(
            inner,
            TokenBucket(
                self.client,
                self.keys,
                company.id,
                limit,
                defer_after=self.defer_after,
                ticket=ticket,
            ),
        )

    def _lock(self, d: Delivery) -> str:
        return self.keys.run_lock(d.company, d.kind.value, d.project)

    @property
    def _ttl_ms(self) -> int:
        return int(self.lock_ttl * 1000)

    def _give_back(self, d: Delivery, lock: RunLock) -> None:
        """Release ``lock`` and the place under the cap, if the lock is still this run's (a
        retry or a failure takes it again from scratch; a deferral parks it instead)."""
        self._release(
            keys=[self._lock(d), self.keys.running(d.company)], args=[lock.format(), lock.task_id]
        )

    def _note(self, record: RunRecord) -> None:
        """Save a run's intermediate state (deferred, a retry's note) in Redis and the history.

        Best effort in the database: a history row a state behind is rewritten by the run's
        next save, and a database outage must not turn a wait into a failure.
        """
        self.history.save(record)
        try:
            self.runs.save(record)
        except DatabaseUnavailable as exc:
            log.warning(
                "history not updated for task_id=%s (%s); its next state will be",
                record.task_id,
                exc,
            )

    def _final(self, record: RunRecord, d: Delivery, lock: FinishLock = None) -> RunRecord:
        """Finish the run in Redis (the commit point: record, executed marker, lock, checked
        against the run's tenant), with the record put in the outbox in the same step; then
        write it to the history and take it out. A database that refuses it (down, full,
        read-only) leaves it waiting: the run is final all the same (its sync's pages were
        committed), and the history gets it when the database accepts writes again."""
        record, waiting = self._finish_in_redis(record, d, lock)
        try:
            self.runs.save(record)
        except DatabaseError as exc:
            log.warning(
                "history row of task_id=%s waits in Redis until the database takes it: %s",
                record.task_id,
                exc,
            )
            return record
        self.outbox.taken(record.task_id)
        if waiting > 1:  # others wait too (the database was refusing until now)
            self.outbox.flush(self.runs)
        return record

    def _tenant_keys(self, d: Delivery) -> tuple[str, str, Tenant] | None:
        """The company key, projects key and tenant the run's writes are checked against."""
        if d.tenant is None or not d.tenant.company:
            return None
        return self.keys.company(d.company), self.keys.projects(d.company), d.tenant

    def _finish_in_redis(
        self, record: RunRecord, d: Delivery, lock: FinishLock = None
    ) -> tuple[RunRecord, int]:
        """``run_finish.lua``; returns the record as finished (``failed`` if the company or
        project went meanwhile) and how many records now wait in the outbox."""
        answer = self._finish_script(record, d, lock, self._tenant_keys(d))
        if isinstance(answer, str):  # gone: finish it as what it is, unchecked, no summary
            record = record.model_copy(
                update={"status": "failed", "error": gone_error(answer), "counts": {}}
            )
            answer = self._finish_script(record, d, lock, None, summary=False)
        # One line per finished run, key=value so it greps with beat's "dispatched" lines.
        log.info(
            "finished company=%s project=%s sync=%s slot=%s outcome=%s duration_ms=%s "
            "attempt=%s task_id=%s%s",
            record.company,
            record.project or "-",
            record.kind,
            record.scheduled_for,
            record.status,
            record.duration_ms,
            record.attempt,
            record.task_id,
            f" error={record.error!r}" if record.error else "",
        )
        return record, int(answer) if isinstance(answer, int) else 0

    def _finish_script(
        self,
        record: RunRecord,
        d: Delivery,
        lock: FinishLock,
        checked: tuple[str, str, Tenant] | None,
        summary: bool = True,
    ) -> object:
        """One call of ``run_finish.lua`` (checked against ``checked``'s tenant when given);
        ``summary=False`` leaves the fleet's last-run summary alone (a removed company's run)."""
        last = json.dumps(
            {
                "company": record.company,
                "project": record.project,
                "task_id": record.task_id,
                "error": record.error,
                "finished_at": record.finished_at.isoformat() if record.finished_at else None,
            }
        )
        company_key, projects_key, tenant = checked or (
            self.keys.company(record.company),
            self.keys.projects(record.company),
            Tenant(""),
        )
        return self._finish(
            keys=[
                self.keys.runs(record.company),
                self.keys.history(record.company),
                self.keys.executed(record.task_id),
                self._lock(d),
                self.keys.last_runs,
                self.keys.running(record.company),
                company_key,
                projects_key,
                self.keys.runs_outbox,
                # The commit point also leaves the outcome waiting for the alert evaluation, so
                # a worker dying before it evaluates loses no alert (erp_sync/alerts/outbox.py).
                self.keys.alerts(record.company),
                self.keys.alert_outbox(record.company),
                self.keys.alert_outbox_due,
            ],
            args=[
                record.task_id,
                record.model_dump_json(),
                self.history.cap,
                record.status,
                int(self.executed_ttl * 1000),
                last_run_field(record.status, record.kind) if summary else "",
                last,
                finish_arg(lock),
                *tenant.args(),
                "1",
            ],
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
