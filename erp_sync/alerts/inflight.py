"""A cap on one company's webhook deliveries in flight, shared by every alerts worker.

Without it, one tenant's slow receivers (each attempt may take the whole alert timeout) fill
every slot of the alerts workers: another tenant's alert waits behind them, and so do the
housekeeping tasks of the ``alerts`` queue (the configuration copy every 60 s, which expires
after 60 s, the stale check, the history pruning). The queue's name is a fixed contract, so the
cap is per company instead: a delivery holds a place in the company's ZSET
(``KeySpace.alert_slots``) while it posts, taken with ``inflight_acquire.lua`` (the same
lease-based semaphore as the ERP's concurrent requests, ``erp_sync.throttle.inflight``). A
worker killed mid-post frees its place when the lease runs out. A delivery that finds every
place taken does not wait in its slot: the task re-queues itself with a short countdown
(``tasks.alerts.deliver``), without spending an attempt or writing the delivery log.
"""

from __future__ import annotations

import redis

from config.env import Settings
from config.keys import KeySpace
from erp_sync.infra import lua

# Deliveries of one company posted at once, fleet-wide (ERP_SYNC_ALERT_COMPANY_CONCURRENCY; 0: no
# cap). Small: a healthy receiver answers in milliseconds, so two places drain a burst quickly,
# and a slow one holds at most two of the alerts workers' slots.
DEFAULT_CAP: int = Settings.model_fields["alert_company_concurrency"].default
# How long a delivery over the cap waits before it asks again (plus up to half of it, spread).
RETRY_AFTER = 1.0


def company_cap(env: Settings) -> int:
    """The cap (``ERP_SYNC_ALERT_COMPANY_CONCURRENCY``; 0 turns it off)."""
    return env.alert_company_concurrency


class DeliverySlots:
    """At most ``cap`` deliveries of one company being posted at once, fleet-wide."""

    def __init__(
        self, client: redis.Redis, keys: KeySpace, company: str, cap: int, lease: float
    ) -> None:
        self.client, self.key, self.cap = client, keys.alert_slots(company), cap
        self.lease_ms = max(1000, int(lease * 1000))
        self._acquire = lua.load(client, "inflight_acquire")

    def take(self, holder: str) -> bool:
        """Take a place for ``holder`` (the delivery task's id); False when all are held. A
        cap of 0 always takes one without writing anything."""
        if self.cap <= 0:
            return True
        return bool(int(self._acquire(keys=[self.key], args=[holder, self.cap, self.lease_ms])))

    def give_back(self, holder: str) -> None:
        if self.cap > 0:
            self.client.zrem(self.key, holder)
