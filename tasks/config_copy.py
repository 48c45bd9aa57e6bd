"""The periodic copy of the configuration into the database (``erp_sync.copy_config``).

The CLI copies what each admin command changed before it exits; this task copies what no
command did: a worker's refresh-token rotation, a timed pause that beat ended, a copy the
database refused while it was down. Sent by the leading beat every ``COPY_CONFIG_SECONDS``
(``erp_sync/infra/celery_config.py``) on the ``alerts`` queue, it bounds how far the
database's copy is behind Redis while the database accepts writes. Running it twice, or two
at once, is harmless: the copy keeps the newest revision of each scope.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import redis
from celery import Task

from config.env import get_settings
from config.keys import KeySpace
from erp_sync.cli.restore_cmd import copy_changed
from erp_sync.db import database
from erp_sync.infra.celery_config import COPY_CONFIG_TASK
from erp_sync.infra.redis_client import connect
from worker import app

MAX_PASSES = 100
log = logging.getLogger("erp_sync.worker")


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return connect(get_settings().redis_url, check=False)


@app.task(name=COPY_CONFIG_TASK, bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def copy_config(self: Task) -> dict[str, object]:
    """Copy every scope changed since the last copy; what the database refuses waits."""
    env = get_settings()
    copied: list[str] = []
    while True:
        done = copy_changed(_client(), KeySpace(env.key_prefix), database())
        copied += done.copied
        if done.error is not None or not done.copied:
            break
    if done.error is not None:
        log.warning(
            "config copy: %s copied, then the database refused: %s", len(copied), done.error
        )
    elif copied:
        log.info("config copy: %s scopes copied to the database", len(copied))
    return {"copied": len(copied), "error": done.error}
