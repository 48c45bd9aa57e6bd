"""The sync tasks: thin Celery wrappers over ``erp_sync.runner`` (which is tested without Celery).

Each task builds a ``Delivery`` from its arguments and Celery's request, lets the runner do
everything else, and turns a transient failure into ``task.retry`` with the runner's backoff.
The retry budget is the runner's (``RetryPolicy``), so Celery's own ``max_retries`` is off.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery import Task

from config.env import get_settings
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.redis_client import connect
from erp_sync.runner import Delivery, Runner
from erp_sync.slots import KIND_OF_TASK


class SyncTask(Task):  # type: ignore[misc]
    """Base of the sync tasks: closes the record of a run killed by the hard time limit."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: Any) -> None:
        # Celery calls this in the worker's main process after killing the child; every other
        # failure was already recorded by the runner inside the task.
        if not isinstance(exc, TimeLimitExceeded):
            return
        delivery = Delivery(task_id=task_id, company=kwargs["company"],
                            kind=KIND_OF_TASK[self.name], project=kwargs.get("project"),
                            slot=kwargs.get("slot", ""), trigger=kwargs.get("trigger", ""))
        runner().killed(delivery, f"hard time limit exceeded ({exc}); the worker killed the run")


# Options every sync task shares (the app config sets the same; explicit here for readers).
TASK_OPTIONS: dict[str, Any] = {
    "bind": True, "base": SyncTask, "acks_late": True, "reject_on_worker_lost": True,
    "max_retries": None,
}


@lru_cache(maxsize=1)
def runner() -> Runner:
    """One runner per worker process (created lazily, so after a prefork child forks)."""
    env = get_settings()
    return Runner(
        connect(env.redis_url, check=False), KeySpace(env.key_prefix),
        soft_limit=env.task_soft_time_limit,
        # Above the hard limit, so a live run never loses its lock; a killed run's redelivery
        # takes its own lock over (same task id) instead of waiting for this to expire.
        lock_ttl=env.task_time_limit + 60,
        # A duplicate can arrive until the broker's visibility timeout has passed twice.
        executed_ttl=max(3600.0, 2 * env.visibility_timeout + env.task_time_limit),
        max_retry_delay=max(1.0, env.visibility_timeout - env.task_time_limit),
    )


def perform(task: Task, kind: SyncKind, company: str, slot: str, trigger: str,
            project: str | None = None) -> dict[str, Any]:
    """Run one delivery; returns its status and counts (the full record is in the history)."""
    request = task.request
    delivery = Delivery(task_id=str(request.id), company=company, kind=kind, project=project,
                        slot=slot, trigger=trigger, retries=int(request.retries or 0))
    outcome = runner().execute(delivery)
    if outcome.retry_in is not None:
        raise task.retry(countdown=outcome.retry_in)
    record = outcome.record
    # Small on purpose: Celery reprs the result into every task-succeeded event.
    return {"status": "duplicate" if outcome.duplicate else record.status if record else None,
            "counts": record.counts if record else {}}
