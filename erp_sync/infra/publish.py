"""Publishing a sync task from outside a worker or beat: the one seam for enqueueing.

``sync-now`` (and the tests' senders) publish through a ``Publisher``. The Celery one builds a
producer-only app from the same ``celery_config`` as ``worker.app``, so the CLI never imports the
top-level ``worker`` module (and its task registry) just to put one message on a queue. Tests hand
the CLI context a publisher of their own instead of patching module globals.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery
from kombu.exceptions import OperationalError

from config.env import Settings
from erp_sync.errors import RedisUnavailable
from erp_sync.infra.celery_config import celery_config


class Publisher(Protocol):
    """Puts one task message on a queue."""

    def send(self, name: str, kwargs: dict[str, Any], task_id: str, queue: str) -> None: ...

    def close(self) -> None: ...


class CeleryPublisher:
    """Publishes through a producer-only Celery app configured like the deployment's."""

    def __init__(self, env: Settings) -> None:
        self.app = Celery("erp_sync_publisher", set_as_current=False)
        self.app.config_from_object(celery_config(env))

    def send(self, name: str, kwargs: dict[str, Any], task_id: str, queue: str) -> None:
        try:
            self.app.send_task(name, kwargs=kwargs, task_id=task_id, queue=queue)
        except OperationalError as exc:
            raise RedisUnavailable(f"cannot publish to the broker: {exc}") from None

    def close(self) -> None:
        self.app.close()
