"""The sync tasks: thin Celery wrappers over ``erp_sync.runs.runner`` (tested without Celery).

Each task builds a ``Delivery`` from its arguments and Celery's request, lets the runner do
everything else, and turns a transient failure into ``task.retry`` with the runner's backoff.
The retry budget is the runner's (``RetryPolicy``), so Celery's own ``max_retries`` is off.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import redis
from billiard.exceptions import TimeLimitExceeded
from celery import Task, current_app
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from config.alerts import AlertRule
from config.env import get_settings
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.alerts.evaluate import Evaluator, RunOutcome
from erp_sync.infra.redis_client import connect
from erp_sync.infra.slots import ALERTS_QUEUE, KIND_OF_TASK
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.runner import Runner


class SyncTask(Task):  # type: ignore[misc]
    """Base of the sync tasks: closes the record of a run killed by the hard time limit."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        # Celery calls this in the worker's main process after killing the child; every other
        # failure was already recorded by the runner inside the task.
        if not isinstance(exc, TimeLimitExceeded):
            return
        delivery = Delivery(
            task_id=task_id,
            company=kwargs["company"],
            kind=KIND_OF_TASK[self.name],
            project=kwargs.get("project"),
            slot=kwargs.get("slot", ""),
            trigger=kwargs.get("trigger", ""),
        )
        runner().killed(delivery, f"hard time limit exceeded ({exc}); the worker killed the run")


class Deferred(Exception):
    """Shown as the reason of a deferral in Flower (the sync gave its slot back to wait)."""


# Options every sync task shares (the app config sets the same; explicit here for readers).
TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "base": SyncTask,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "max_retries": None,
}


@lru_cache(maxsize=1)
def runner() -> Runner:
    """One runner per worker process (created lazily, so after a prefork child forks)."""
    env = get_settings()
    return Runner(
        connect(env.redis_url, check=False),
        KeySpace(env.key_prefix),
        soft_limit=env.task_soft_time_limit,
        # Renewed by the live run's heartbeat; well under the visibility timeout, so the
        # redelivery of a run whose worker died takes over soon after the broker hands it out.
        lock_ttl=max(1.0, min(env.run_lock_seconds, env.visibility_timeout / 4)),
        defer_after=env.defer_after_seconds,
        # A live run keeps its lock past the visibility timeout (its redelivery waits), but
        # not forever: a thread hung this long on a call that never returns lets it go.
        max_run=4 * env.visibility_timeout,
        # A duplicate can arrive until the broker's visibility timeout has passed twice.
        executed_ttl=max(3600.0, 2 * env.visibility_timeout + env.task_time_limit),
        max_retry_delay=max(1.0, env.visibility_timeout - env.task_time_limit),
    )


def perform(
    task: Task,
    kind: SyncKind,
    company: str,
    slot: str,
    trigger: str,
    project: str | None = None,
    deferrals: int = 0,
    ticket: float | None = None,
) -> dict[str, Any]:
    """Run one delivery; returns its status and counts (the full record is in the history).

    A transient error retries with the runner's backoff; a sync that must wait is *deferred*:
    re-queued with a countdown under the same task id (Celery's retry mechanism), its
    ``deferrals`` count carried in its kwargs so it never eats into the retry budget, and its
    ``ticket`` (its turn in the company's rate-limit queue) too.
    """
    request = task.request
    retries = int(request.retries or 0) - deferrals  # Celery counts both kinds of re-queue
    delivery = Delivery(
        task_id=str(request.id),
        company=company,
        kind=kind,
        project=project,
        slot=slot,
        trigger=trigger,
        retries=retries,
        deferrals=deferrals,
        ticket=ticket,
    )
    try:
        outcome = runner().execute(delivery)
        if outcome.defer_in is not None:
            raise task.retry(
                countdown=outcome.defer_in,
                max_retries=None,
                kwargs={**request.kwargs, "deferrals": deferrals + 1, "ticket": outcome.ticket},
                exc=Deferred(f"deferred {outcome.defer_in:.1f}s"),
            )
        if outcome.retry_in is not None:  # a retry queues afresh: no rate-limit turn carried
            raise task.retry(countdown=outcome.retry_in, kwargs={**request.kwargs, "ticket": None})
    except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
        # Our own Redis failed (not the sync, not the ERP). Raised as a task error, Celery
        # would acknowledge the message as failed and the slot would be lost with its record
        # left "running". Rejected with requeue, it goes back to the queue, or, with Redis
        # still down, stays unacknowledged in Redis until the visibility sweep restores it.
        raise Reject(f"Redis unavailable: {exc}", requeue=True) from exc
    record = outcome.record
    if record is not None and not outcome.duplicate:
        tenant = outcome.tenant
        evaluate_alerts(
            RunOutcome(
                record.company,
                record.kind,
                record.project,
                record.status,
                record.error,
                record.scheduled_for,
                # Its incident is written only while the run's tenant is still there.
                company_stamp=tenant.company if tenant else "",
                project_stamp=tenant.project_stamp if tenant else "",
                task_id=record.task_id,
            )
        )
    elif record is not None:
        # A redelivery of a finished run: its worker may have died before evaluating it.
        evaluate_duplicate(record.company, record.task_id)
    # Small on purpose: Celery reprs the result into every task-succeeded event.
    return {
        "status": "duplicate" if outcome.duplicate else record.status if record else None,
        "counts": record.counts if record else {},
    }


def send_alert(rule: AlertRule, message: dict[str, Any]) -> None:
    """Queue one webhook delivery on the ``alerts`` queue (never posted from a sync's slot)."""
    current_app.send_task(
        "tasks.alerts.deliver",
        queue=ALERTS_QUEUE,
        kwargs={"company": rule.company, "alert": rule.id, "message": message},
    )


def _evaluator() -> Evaluator:
    env = get_settings()
    return Evaluator(runner().client, KeySpace(env.key_prefix), env.seconds_per_hour, send_alert)


def evaluate_alerts(outcome: RunOutcome) -> None:
    """The run-outcome hook: one alert per incident, queued; a failure here never fails a sync.

    At least once: ``run_finish.lua`` left the outcome waiting in the company's alert outbox at
    the run's commit point, and ``on_run`` takes it out with the incident it counts. A worker
    killed before this, or an error here (Redis down), leaves it waiting: the periodic check
    (``tasks.alerts.check_stale``) evaluates it after the outbox's grace, counted once."""
    try:
        _evaluator().on_run(outcome)
    except Exception:  # the sync is done; its outcome waits in the outbox for the next check
        logging.getLogger("erp_sync.alerts").exception(
            "alert evaluation failed company=%s sync=%s task_id=%s (left for the periodic check)",
            outcome.company,
            outcome.kind,
            outcome.task_id,
        )


def evaluate_duplicate(company: str, task_id: str) -> None:
    """A redelivered, already finished run: evaluate its outcome at once if it still waits
    (its worker died between the finish and the evaluation), instead of after the grace."""
    try:
        _evaluator().evaluate_pending(company, task_id)
    except Exception:  # as above: the periodic check evaluates it
        logging.getLogger("erp_sync.alerts").exception(
            "alert evaluation of a redelivered run failed company=%s task_id=%s", company, task_id
        )
