"""The Celery app: ``celery -A worker worker -Q company,project``, ``celery -A worker beat``,
``celery -A worker flower``.

Configuration is added lazily (``add_defaults`` with a callable), so importing this module reads
no environment; the first use of ``app.conf`` does.
"""

from __future__ import annotations

from celery import Celery

from config.env import get_settings
from erp_sync.broker import install as install_broker_fix
from erp_sync.celery_config import celery_config

# Worker, beat and Flower all use the Redis transport that survives a Redis restart mid-task
# (erp_sync/broker.py: Celery 5.7 workers died of it). Process wiring, so here, not in the config.
install_broker_fix()
app = Celery("erp_sync", include=["tasks.company", "tasks.project", "tasks.alerts"])
app.add_defaults(lambda: celery_config(get_settings()))
