"""Celery configuration derived from the process settings (a pure function, easy to test).

The reliability choices follow the Celery/Redis lessons in shared/background/peer-schedulers.md:
late acknowledgement with prefetch 1 so a killed worker's sync is redelivered, a bounded
redelivery on worker loss, a visibility timeout above the hard time limit so running syncs are
not redelivered, and every broker key under the deployment prefix.
"""

from __future__ import annotations

from typing import Any

from config.env import Settings
from config.keys import KeySpace
from erp_sync.infra.redis_client import kombu_broker
from erp_sync.infra.slots import ALERTS_QUEUE, COMPANY_QUEUE, TASK_NAMES, queue_for

# tasks/maintenance.py; named here because erp_sync never imports the tasks.
PRUNE_HISTORY_TASK = "erp_sync.prune_history"
ARCHIVE_AUDIT_TASK = "erp_sync.archive_audit"
# tasks/config_copy.py: the bound on how far the database's copy of the configuration may lag.
COPY_CONFIG_TASK = "erp_sync.copy_config"
COPY_CONFIG_SECONDS = 60.0


def celery_config(env: Settings) -> dict[str, Any]:
    keys = KeySpace(env.key_prefix)
    broker, sentinel_options = kombu_broker(env.effective_broker_url)
    return {
        "broker_url": broker,
        "broker_transport_options": {
            **sentinel_options,
            "global_keyprefix": keys.broker_prefix,
            "visibility_timeout": env.visibility_timeout,
            # kombu sweeps for expired unacked messages only every interval * throttle seconds
            # (100 s by default); sweep every interval so a dead worker's sync comes back within
            # visibility_timeout plus at most a sixth of it.
            "unacked_restore_interval": int(max(1, min(60, env.visibility_timeout / 6))),
            "unacked_restore_throttle": 1,
            # The sweep's mutex outlives a Redis crash that happens while a worker holds it
            # (it is persisted with its expiry): kombu's 300 s default would hold every
            # restore back for five minutes after such a crash.
            "unacked_mutex_expire": int(max(5, min(300, env.visibility_timeout / 2))),
            "socket_keepalive": True,
            "health_check_interval": 10,
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_soft_time_limit": env.task_soft_time_limit,
        "task_time_limit": env.task_time_limit,
        "task_default_queue": COMPANY_QUEUE,
        "task_create_missing_queues": True,
        "task_routes": {
            **{name: {"queue": queue_for(kind)} for kind, name in TASK_NAMES.items()},
            PRUNE_HISTORY_TASK: {"queue": ALERTS_QUEUE},
            ARCHIVE_AUDIT_TASK: {"queue": ALERTS_QUEUE},
            COPY_CONFIG_TASK: {"queue": ALERTS_QUEUE},
            "tasks.alerts.*": {"queue": ALERTS_QUEUE},
        },
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_scheduler": "beat_schedule:RedisScheduler",
        "beat_enable_remote_control": True,
        "beat_max_loop_interval": 1.0,
        # The app's own periodic work, sent by the leader only under its lease
        # (erp_sync/beat/static.py), consumed on `alerts` with the other housekeeping.
        "beat_schedule": {
            "prune-history": {
                "task": PRUNE_HISTORY_TASK,
                "schedule": 3600.0,
                "options": {"queue": ALERTS_QUEUE, "expires": 3600.0},
            },
            "archive-audit": {
                "task": ARCHIVE_AUDIT_TASK,
                "schedule": 3600.0,
                "options": {"queue": ALERTS_QUEUE, "expires": 3600.0},
            },
            "copy-config": {
                "task": COPY_CONFIG_TASK,
                "schedule": COPY_CONFIG_SECONDS,
                "options": {"queue": ALERTS_QUEUE, "expires": COPY_CONFIG_SECONDS},
            },
            "alerts.check_stale": {
                "task": "tasks.alerts.check_stale",
                "schedule": env.alert_stale_check_seconds,
                "options": {"queue": ALERTS_QUEUE, "expires": env.alert_stale_check_seconds},
            },
        },
        "timezone": "UTC",
        "enable_utc": True,
    }
