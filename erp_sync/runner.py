"""One delivery of a sync task, from guard checks to the history record (no Celery here).

Order of checks, each a reason a run does not happen:
1. The task id already completed (its ``executed`` marker is set): a duplicate delivery, nothing
   is done or recorded again.
2. The company is gone, the project is gone, the ERP does not support the sync, or (for scheduled
   runs) the sync is switched off in its settings: recorded ``skipped`` with the reason. Beat may
   have dispatched just before the change; manual runs ignore the on/off switch, which only
   governs the schedule.
3. The run lock of (company, kind, project) is held by another task id: the previous run is still
   going, so this slot is recorded ``skipped``. The lock's value is the holder's task id, so a
   redelivery of a run whose worker was killed takes its own stale lock over and reruns.
4. The task id was started too often without finishing (lost workers): ``failed``, so a poison
   message cannot loop forever.

Then the sync runs. Success, a permanent error or an exhausted retry budget saves the final
record, sets the executed marker and releases the lock in one script; a transient error releases
the lock and asks the caller to retry after a backoff (exponential with jitter, never sooner than
``retry_after``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from billiard.exceptions import SoftTimeLimitExceeded

from config.keys import KeySpace
from config.models import CAPABILITIES, Company, StoredSettings, SyncKind, parse
from erp_sync import lua
from erp_sync.connectors import Connector, connector_for
from erp_sync.errors import (
    PermanentConnectorError,
    SyncTimedOut,
    TransientConnectorError,
)
from erp_sync.history import History, RunRecord, now
from erp_sync.ratelimit import DEFAULT_LIMITS, RateLimit, Throttled, TokenBucket
from erp_sync.syncs import run_sync

MAX_REDELIVERIES = 3
log = logging.getLogger("erp_sync.worker")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient ERP errors: ``base * 2**retry`` capped, half of it random."""

    max_retries: int = 5
    base: float = 1.0
    cap: float = 60.0

    def delay(self, retries: int, retry_after: float | None, rng: random.Random) -> float:
        step = min(self.cap, self.base * 2 ** retries)
        backoff = step / 2 + rng.uniform(0, step / 2)
        if retry_after:
            # Never sooner than the ERP asked; a little spread so waiters do not return together.
            return float(max(backoff, retry_after * (1 + rng.uniform(0, 0.1))))
        return float(backoff)


@dataclass(frozen=True)
class Delivery:
    """What the task was given plus Celery's bookkeeping."""

    task_id: str
    company: str
    kind: SyncKind
    project: str | None
    slot: str
    trigger: str = "schedule"
    retries: int = 0


@dataclass
class Outcome:
    record: RunRecord | None
    retry_in: float | None = None
    duplicate: bool = False


@dataclass
class Runner:
    """Runs deliveries against one deployment (client passed in; limits in seconds)."""

    client: redis.Redis
    keys: KeySpace
    soft_limit: float = 600.0
    lock_ttl: float = 960.0
    executed_ttl: float = 7200.0
    # A retry waits in the broker as an unacknowledged message: one held past the visibility
    # timeout is redelivered while the original still waits, and the two would run together.
    max_retry_delay: float = 2640.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    connector: Callable[[Company], Connector] | None = None

    def __post_init__(self) -> None:
        self.history = History(self.client, self.keys)
        self._start = lua.load(self.client, "run_start")
        self._finish = lua.load(self.client, "run_finish")
        self._release = lua.load(self.client, "compare_and_delete")
        self._read_facts = lua.load(self.client, "run_facts")

    def execute(self, d: Delivery) -> Outcome:
        facts = self._read(d)
        if facts.executed:
            return Outcome(facts.previous, duplicate=True)
        record = RunRecord(
            kind=d.kind.value, company=d.company, project=d.project, scheduled_for=d.slot,
            started_at=now(), task_id=d.task_id, trigger=d.trigger,
            attempt=facts.previous.attempt + 1 if facts.previous else 1)
        reason = _skip_reason(d, facts)
        if facts.company is None or reason:
            return Outcome(self._final(record.finish("skipped", error=reason), d))
        lost = record.attempt - 1 - d.retries
        if lost > MAX_REDELIVERIES:
            return Outcome(self._final(record.finish(
                "failed", error=f"gave up: the run was interrupted {lost} times "
                                "(worker killed or lost mid-run)"), d))
        holder = self._start(keys=[self._lock(d), self.keys.runs(d.company),
                                   self.keys.history(d.company)],
                             args=[d.task_id, int(self.lock_ttl * 1000),
                                   record.model_dump_json(), self.history.cap])
        if holder != 1:
            return Outcome(self._final(record.finish(
                "skipped", error=f"the previous run ({holder}) is still running"), d))
        try:
            return self._run(d, record, self._connector(facts.company, facts.limits),
                             facts.watermarks)
        except BaseException:
            self._release(keys=[self._lock(d)], args=[d.task_id])
            raise

    def killed(self, d: Delivery, reason: str) -> RunRecord | None:
        """Record a run its worker killed (Celery's hard time limit) as failed, finally.

        Celery acknowledges such a task, so no redelivery will finish its record; without this it
        would stay ``running`` and hold its lock until the TTL.
        """
        previous = self.history.get(d.company, d.task_id)
        if previous is None or previous.status != "running":
            return None
        return self._final(previous.finish("failed", error=reason), d)

    def _run(self, d: Delivery, record: RunRecord, connector: Connector,
             watermarks: str) -> Outcome:
        try:
            counts = run_sync(self.client, self.keys, d.company, d.kind, d.project, connector,
                              deadline=time.monotonic() + self.soft_limit,
                              watermarks=watermarks)
        except TransientConnectorError as exc:
            if d.retries >= self.policy.max_retries:
                return Outcome(self._final(record.finish(
                    "failed", error=f"{_describe(exc)} (gave up after {d.retries} retries)"), d))
            delay = min(self.policy.delay(d.retries, exc.retry_after, self.rng),
                        self.max_retry_delay)
            self.history.save(record.model_copy(update={
                "error": f"{_describe(exc)}; retry {d.retries + 1} in {delay:.1f}s"}))
            # The retry takes the lock again; a slot arriving meanwhile may run (not overlap).
            self._release(keys=[self._lock(d)], args=[d.task_id])
            return Outcome(record, retry_in=delay)
        except (PermanentConnectorError, SyncTimedOut) as exc:
            return Outcome(self._final(record.finish("failed", error=_describe(exc)), d))
        except SoftTimeLimitExceeded:  # raised inside prefork children by Celery's soft limit
            return Outcome(self._final(record.finish(
                "failed", error=f"soft time limit exceeded after {self.soft_limit:g}s"), d))
        except Exception as exc:
            self._final(record.finish("failed", error=f"internal error: {_describe(exc)}"), d)
            raise
        return Outcome(self._final(record.finish("succeeded", counts=counts.as_dict()), d))

    def _read(self, d: Delivery) -> _Facts:
        """Everything the checks need, in one round trip."""
        k = self.keys
        executed, previous, company, settings, project, flat, marks = self._read_facts(
            keys=[k.executed(d.task_id), k.runs(d.company), k.company(d.company),
                  k.settings(d.company), k.projects(d.company), k.rate_limit_overrides,
                  k.cursor(d.company, d.kind.value, d.project)],
            args=[d.task_id, d.project or "-"])
        limits = dict(zip(flat[0::2], flat[1::2], strict=True))
        return _Facts(
            executed=bool(executed),
            previous=RunRecord.model_validate_json(previous) if previous else None,
            company=parse(Company, company, f"company {d.company!r}") if company else None,
            settings=parse(StoredSettings, settings, "settings") if settings else None,
            project_exists=bool(project), limits=limits, watermarks=str(marks))

    def _connector(self, company: Company, overrides: dict[str, str]) -> Connector:
        inner = self.connector(company) if self.connector else \
            connector_for(self.client, self.keys, company)
        raw = overrides.get(company.erp.value)
        limit = RateLimit.model_validate_json(raw) if raw else DEFAULT_LIMITS[company.erp]
        return Throttled(inner, TokenBucket(self.client, self.keys, company.id, limit))

    def _lock(self, d: Delivery) -> str:
        return self.keys.run_lock(d.company, d.kind.value, d.project)

    def _final(self, record: RunRecord, d: Delivery) -> RunRecord:
        """Save a finished record, mark the task id executed, release our lock (atomically)."""
        last = json.dumps({"company": record.company, "project": record.project,
                           "task_id": record.task_id, "error": record.error,
                           "finished_at": record.finished_at.isoformat()
                           if record.finished_at else None})
        self._finish(keys=[self.keys.runs(record.company), self.keys.history(record.company),
                           self.keys.executed(record.task_id), self._lock(d),
                           self.keys.last_runs],
                     args=[record.task_id, record.model_dump_json(), self.history.cap,
                           record.status, int(self.executed_ttl * 1000),
                           f"{record.status}:{record.kind}", last])
        # One line per finished run, key=value so it greps with beat's "dispatched" lines.
        log.info("finished company=%s project=%s sync=%s slot=%s outcome=%s duration_ms=%s "
                 "attempt=%s task_id=%s%s", record.company, record.project or "-", record.kind,
                 record.scheduled_for, record.status, record.duration_ms, record.attempt,
                 record.task_id, f" error={record.error!r}" if record.error else "")
        return record


@dataclass(frozen=True)
class _Facts:
    executed: bool
    previous: RunRecord | None
    company: Company | None
    settings: StoredSettings | None
    project_exists: bool
    limits: dict[str, str]
    watermarks: str


def _skip_reason(d: Delivery, facts: _Facts) -> str | None:
    """Why a delivery must not run: company/project gone, sync unsupported or switched off."""
    company = facts.company
    if company is None:
        return f"company {d.company!r} no longer exists"
    if d.kind not in CAPABILITIES[company.erp]:
        return f"{company.erp.value} does not support the {d.kind.value} sync"
    if d.trigger != "manual" and (
            facts.settings is None or d.kind not in facts.settings.settings.enabled_kinds()):
        return f"the {d.kind.value} sync is switched off in {d.company!r}'s settings"
    if d.kind.project_level and (d.project is None or not facts.project_exists):
        return f"project {d.project!r} no longer exists in {d.company!r}"
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
