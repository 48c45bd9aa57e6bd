"""Celery and Redis plumbing: connections (``redis_client``), the fleet's one clock (``clock``),
the Celery configuration and kombu fix (``celery_config``, ``broker``), the task contract
between beat and workers (``slots``), enqueueing from outside (``publish``) and the Lua scripts
(``lua``). The lowest layer of ``erp_sync``: it imports nothing above it."""
