"""A cap on an ERP's concurrent requests per company, shared by every worker of the fleet.

Some ERPs limit concurrency as well as rate (QuickBooks Online: 10 requests at once per realm,
answering 429 beyond). Each request holds a place in a Redis ZSET while it runs
(``inflight_acquire.lua``); a place is a lease, so a worker killed mid-request frees it when the
lease runs out instead of shrinking the cap for good. Waiting for a place polls briefly: places
free up as fast as requests finish, which is much shorter than any rate-limit wait.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from config.keys import KeySpace
from erp_sync.errors import MustWait
from erp_sync.infra import lua

POLL = 0.02


class RequestSlots:
    """At most ``cap`` requests of one company in flight at once, fleet-wide."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        company: str,
        cap: int,
        lease: float = 60.0,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.key, self.cap = client, keys.request_slots(company), cap
        self.lease_ms, self.max_wait, self.sleep = int(lease * 1000), max_wait, sleep
        self._acquire = lua.load(client, "inflight_acquire")

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one place for the duration of a request (waiting for one if all are taken)."""
        holder = uuid.uuid4().hex
        started = time.monotonic()
        while not int(self._acquire(keys=[self.key], args=[holder, self.cap, self.lease_ms])):
            if time.monotonic() - started > self.max_wait:
                raise MustWait(1.0, f"a place among the ERP's {self.cap} concurrent requests")
            self.sleep(POLL)
        try:
            yield
        finally:
            self.client.zrem(self.key, holder)
