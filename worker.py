"""The Celery app: ``celery -A worker worker -Q company,project``, ``celery -A worker beat``,
``celery -A worker flower``.

Configuration is added lazily (``add_defaults`` with a callable), so importing this module reads
no environment; the first use of ``app.conf`` does.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import import_modules, worker_init

from config.env import get_settings
from erp_sync.db import database
from erp_sync.errors import ErpSyncError
from erp_sync.infra.broker import install as install_broker_fix
from erp_sync.infra.celery_config import celery_config
from erp_sync.infra.flower_guard import check_flower_start

# Worker, beat and Flower all use the Redis transport that survives a Redis restart mid-task
# (erp_sync/infra/broker.py: Celery 5.7 workers died of it). Process wiring, so here, not in
# the config.
install_broker_fix()
app = Celery(
    "erp_sync",
    include=[
        "tasks.company",
        "tasks.project",
        "tasks.maintenance",
        "tasks.alerts",
        "tasks.config_copy",
    ],
)
app.add_defaults(lambda: celery_config(get_settings()))


@worker_init.connect  # type: ignore[untyped-decorator]
def _check_database(**_: Any) -> None:
    """A worker whose database schema is behind says so in one line and does not start (a sync
    would otherwise fail deep inside, on every run). Beat does not need the database."""
    db = database()
    try:
        db.check()
    except ErpSyncError as exc:
        logging.getLogger("erp_sync.worker").critical("worker not started: %s", exc)
        raise SystemExit(2) from None
    finally:
        db.dispose()  # no connection crosses a prefork fork; each child opens its own


# `celery -A worker flower` refuses to listen without a login (FLOWER_BASIC_AUTH, --basic-auth,
# --auth) unless ERP_SYNC_FLOWER_ALLOW_OPEN=true, and puts /metrics behind it. Flower sends this
# signal while building its app, after reading its options and before binding its port; the
# receiver does nothing in a worker or beat.
import_modules.connect(check_flower_start, weak=False, dispatch_uid="erp_sync.flower_guard")
