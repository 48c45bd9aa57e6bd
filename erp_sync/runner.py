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

Then the sync runs. Success, a permanent error or an exhausted retry budget saves the final record
and sets the executed marker; a transient error releases the lock and asks
the caller to retry after a backoff (exponential with jitter, never sooner than ``retry_after``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from config.keys import KeySpace
from config.models import CAPABILITIES, Company, SyncKind
from config.store import SettingsStore
from erp_sync.connectors import Connector, connector_for
from erp_sync.errors import (
    NotFound,
    PermanentConnectorError,
    SyncTimedOut,
    TransientConnectorError,
)
from erp_sync.history import History, RunRecord, now
from erp_sync.ratelimit import Throttled, TokenBucket, limit_for
from erp_sync.sync import run_sync

MAX_REDELIVERIES = 3

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return holder
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    connector: Callable[[Company], Connector] | None = None

    def __post_init__(self) -> None:
        self.history = History(self.client, self.keys)
        self.store = SettingsStore(self.client, self.keys)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._release = self.client.register_script(_RELEASE)

    def execute(self, d: Delivery) -> Outcome:
        if self.client.exists(self.keys.executed(d.task_id)):
            return Outcome(self.history.get(d.company, d.task_id), duplicate=True)
        previous = self.history.get(d.company, d.task_id)
        record = RunRecord(
            kind=d.kind.value, company=d.company, project=d.project, scheduled_for=d.slot,
            started_at=now(), task_id=d.task_id, trigger=d.trigger,
            attempt=previous.attempt + 1 if previous else 1)
        company, reason = self._guard(d)
        if company is None or reason:
            return Outcome(self._final(record.finish("skipped", error=reason)))
        lock = self.keys.run_lock(d.company, d.kind.value, d.project)
        holder = self._acquire(keys=[lock], args=[d.task_id, int(self.lock_ttl * 1000)])
        if holder != 1:
            return Outcome(self._final(record.finish(
                "skipped", error=f"the previous run ({holder}) is still running")))
        try:
            return self._run(d, record, company)
        finally:
            self._release(keys=[lock], args=[d.task_id])

    def _run(self, d: Delivery, record: RunRecord, company: Company) -> Outcome:
        lost = record.attempt - 1 - d.retries
        if lost > MAX_REDELIVERIES:
            return Outcome(self._final(record.finish(
                "failed", error=f"gave up: the run was interrupted {lost} times "
                                "(worker killed or lost mid-run)")))
        self.history.save(record)
        connector = self._connector(company)
        try:
            counts = run_sync(self.client, self.keys, d.company, d.kind, d.project, connector,
                              deadline=time.monotonic() + self.soft_limit)
        except TransientConnectorError as exc:
            if d.retries >= self.policy.max_retries:
                return Outcome(self._final(record.finish(
                    "failed", error=f"{_describe(exc)} (gave up after {d.retries} retries)")))
            delay = self.policy.delay(d.retries, exc.retry_after, self.rng)
            self.history.save(record.model_copy(update={
                "error": f"{_describe(exc)}; retry {d.retries + 1} in {delay:.1f}s"}))
            return Outcome(record, retry_in=delay)
        except (PermanentConnectorError, SyncTimedOut) as exc:
            return Outcome(self._final(record.finish("failed", error=_describe(exc))))
        except Exception as exc:
            if _is_soft_time_limit(exc):
                return Outcome(self._final(record.finish(
                    "failed", error=f"soft time limit exceeded after {self.soft_limit:g}s")))
            self._final(record.finish("failed", error=f"internal error: {_describe(exc)}"))
            raise
        return Outcome(self._final(record.finish("succeeded", counts=counts.as_dict())))

    def _guard(self, d: Delivery) -> tuple[Company | None, str | None]:
        """The company, and a reason to skip (company/project gone, sync unsupported or off)."""
        try:
            company = self.store.get_company(d.company)
        except NotFound:
            return None, f"company {d.company!r} no longer exists"
        if d.kind not in CAPABILITIES[company.erp]:
            return company, f"{company.erp.value} does not support the {d.kind.value} sync"
        if d.trigger == "schedule" and \
                d.kind not in self.store.get_settings(d.company).settings.enabled_kinds():
            return company, f"the {d.kind.value} sync is switched off in {d.company!r}'s settings"
        if d.kind.project_level and (
                d.project is None
                or not self.client.hexists(self.keys.projects(d.company), d.project)):
            return company, f"project {d.project!r} no longer exists in {d.company!r}"
        return company, None

    def _connector(self, company: Company) -> Connector:
        inner = self.connector(company) if self.connector else \
            connector_for(self.client, self.keys, company)
        bucket = TokenBucket(self.client, self.keys, company.id,
                             limit_for(self.client, self.keys, company.erp))
        return Throttled(inner, bucket)

    def _final(self, record: RunRecord) -> RunRecord:
        """Save a finished record, then mark the task id executed.

        In this order a crash between the two leaves a finished record and a rerun (harmless:
        syncs are idempotent), never a marker without its record.
        """
        self.history.save(record)
        self.client.set(self.keys.executed(record.task_id), record.status,
                        px=int(self.executed_ttl * 1000))
        return record


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_soft_time_limit(exc: BaseException) -> bool:
    # Celery raises this inside prefork children; imported lazily so the runner needs no Celery.
    return type(exc).__name__ == "SoftTimeLimitExceeded"
