"""The Celery app: ``celery -A worker worker -Q company,project``, ``celery -A worker beat``,
``celery -A worker flower``.

Configuration is added lazily (``add_defaults`` with a callable), so importing this module reads
no environment; the first use of ``app.conf`` does.
"""

from __future__ import annotations

from celery import Celery

from config.env import get_settings
from erp_sync.celery_config import celery_config

app = Celery("erp_sync", include=["tasks.company", "tasks.project"])
app.add_defaults(lambda: celery_config(get_settings()))
