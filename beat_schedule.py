"""The Celery beat scheduler that reads every company's schedule from Redis.

``celery -A worker beat`` uses it by default (``beat_scheduler`` in the app's configuration). Any
number of beats may run: one holds the lease and dispatches, the others stand by and take over
within about ``ERP_SYNC_BEAT_LEASE_SECONDS`` when it dies. All the work is in
``erp_sync.beat.engine.BeatEngine``; this class adapts it to Celery's ``Scheduler`` interface and
keeps beat alive through Redis outages (it logs once, retries, and catches up from Redis state).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery.beat import Scheduler

from config.env import get_settings
from config.keys import KeySpace
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.infra.redis_client import connect, redact

log = logging.getLogger("erp_sync.beat")


class RedisScheduler(Scheduler):  # type: ignore[misc]
    """Celery ``Scheduler`` whose tick is one ``BeatEngine.step``."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._engine: BeatEngine | None = None
        self._outage_since: float | None = None
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        # Celery installs app.conf.beat_schedule here; the engine sends those entries itself,
        # under the leader lease (erp_sync/beat/static.py), so nothing is kept locally.
        self.data: dict[str, Any] = {}
        env = get_settings()
        if env.effective_broker_url != env.redis_url:
            # Beat queues task messages in the same Lua script that advances the due index
            # (that is what makes a slot's dispatch atomic), so the queues must be in that Redis.
            log.critical(
                "beat needs ERP_SYNC_BROKER_URL to be the same Redis as "
                "ERP_SYNC_REDIS_URL (got %s and %s); refusing to start",
                redact(env.effective_broker_url),
                redact(env.redis_url),
            )
            raise SystemExit(2)

    @property
    def engine(self) -> BeatEngine:
        if self._engine is None:
            env = get_settings()
            client = connect(env.redis_url, check=False, socket_timeout=5)
            lease_timeout = max(0.2, env.beat_lease_seconds / 3)
            self._engine = BeatEngine(
                self.app,
                client,
                KeySpace(env.key_prefix),
                EngineConfig(
                    seconds_per_hour=env.seconds_per_hour,
                    lease_seconds=env.beat_lease_seconds,
                    sweep_seconds=env.sweep_seconds,
                ),
                lease_client=connect(
                    env.redis_url,
                    check=False,
                    socket_timeout=lease_timeout,
                    socket_connect_timeout=lease_timeout,
                ),
            )
            log.info(
                "beat %s: schedule from %s, prefix %s",
                self._engine.node,
                redact(env.redis_url),
                env.key_prefix,
            )
        return self._engine

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            delay = self.engine.step()
        except redis.RedisError as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning(
                    "beat: Redis unavailable (%s); retrying, nothing is lost: due times "
                    "and changes wait in Redis",
                    str(exc).splitlines()[0],
                )
            return 1.0
        except Exception:
            # A bug or unexpected data must not kill the schedule for everyone: log it with
            # its traceback and try again (the due backlog metric shows if it persists).
            log.exception("beat: unexpected error in a tick; retrying in 1s")
            return 1.0
        if self._outage_since is not None:
            log.warning("beat: Redis is back after %.1fs", time.monotonic() - self._outage_since)
            self._outage_since = None
        return delay

    @property
    def schedule(self) -> dict[str, Any]:
        return self.data

    def should_sync(self) -> bool:
        return False

    def sync(self) -> None:
        """Nothing to persist locally: all state is already in Redis."""

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    @property
    def info(self) -> str:
        env = get_settings()
        return f"    . redis -> {redact(env.redis_url)} (prefix {env.key_prefix})"
