"""A live run keeps its lock (and its place under its company's concurrency cap) alive.

Run locks have a short TTL that a background thread renews while the sync runs. A run whose
worker dies stops renewing, so its lock expires within one TTL and the redelivery of the same
task id takes over; a run that is merely slow keeps renewing, so a redelivery that arrives while
it still runs (a thread pool has no hard time limit, and a long run can outlive the broker's
visibility timeout) finds the lock alive and is deferred instead of running beside it.

The renewal also checks that the run's company (and project) is still the tenant it started
for: once it was removed, the lock and the place under the cap are given back at once and the
run is told (``lost``), so it stops at its next page instead of syncing for a removed tenant.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

import redis
from redis.commands.core import Script

from erp_sync.runs.locks import RunLock
from erp_sync.runs.tenant import Tenant

log = logging.getLogger("erp_sync.worker")


class Heartbeat:
    """``with Heartbeat(...):`` renews the lock every third of its TTL until the block ends."""

    def __init__(
        self,
        script: Script,
        lock_key: str,
        running_key: str,
        lock: RunLock,
        ttl_ms: int,
        max_run: float = float("inf"),
        tenant: tuple[str, str, Tenant] | None = None,
    ) -> None:
        """``tenant``: the company key, the projects key and the run's tenant, checked at
        every renewal (``run_heartbeat.lua``)."""
        self.script, self.keys, self.task_id = script, [lock_key, running_key], lock.task_id
        self.args: list[str | int] = [lock.format(), ttl_ms, lock.task_id]
        if tenant is not None:
            company_key, projects_key, who = tenant
            self.keys += [company_key, projects_key]
            self.args += who.args()
        self.interval = ttl_ms / 3000
        # Renewal stops after ``max_run`` seconds (four visibility timeouts in a worker): a run
        # hung for good on a thread pool then lets its lock expire instead of blocking its sync
        # forever.
        self.until = time.monotonic() + max_run
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{lock.task_id}", daemon=True
        )
        self.lost = False  # the lock is no longer surely ours: run_sync stops between pages

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if time.monotonic() > self.until:
                self.lost = True
                log.warning(
                    "run %s has run for over four visibility timeouts; its lock is left "
                    "to expire so later slots are not blocked",
                    self.task_id,
                )
                return
            try:
                renewed = self.script(keys=self.keys, args=self.args)
            except redis.RedisError as exc:  # Redis away for a moment: try again next beat
                log.warning("heartbeat of %s failed: %s", self.task_id, exc)
                continue
            if renewed == -1:  # (the lock and the place are given back already)
                self.lost = True
                log.warning(
                    "run %s stops: its company or project was removed while it ran",
                    self.task_id,
                )
                return
            if not renewed and not self.lost:
                self.lost = True
                log.warning(
                    "run %s lost its lock (it expired while Redis or this worker was "
                    "stalled); a redelivery may run it again",
                    self.task_id,
                )
