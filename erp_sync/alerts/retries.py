"""How a webhook delivery is retried without being posted twice.

Two ways a delivery could be posted twice, both closed here:

* A retry waits in the broker as an unacknowledged message until its countdown ends; one held
  past the broker's visibility timeout is handed out a second time while the first copy still
  waits, and both post (and log) the attempt. With the default 2 s doubling, the 12th retry
  waited 4,096 s, past the default one-hour visibility timeout, and ``ERP_SYNC_ALERT_ATTEMPTS``
  allows 20. ``countdown`` caps the wait at ``cap(...)``: the visibility timeout less the hard
  time limit, as the sync retries are (``max_retry_delay`` in ``tasks.runner()``).
* A delivery recorded with its incident is queued again by the outbox when its sender seemed to
  have died (``erp_sync.alerts.evaluate``): two tasks, one delivery id. ``claim`` lets the first
  task id that reaches it post it; its own redeliveries continue, any other task id holding the
  same delivery posts nothing.
"""

from __future__ import annotations

import redis

from config.keys import KeySpace

# A claim outlives every copy of its delivery: the outbox re-queues within minutes, and a retry
# chain lasts at most attempts x cap.
CLAIM_FLOOR = 86_400.0


def cap(visibility_timeout: float, task_time_limit: float) -> float:
    """The longest wait before a retry that the broker cannot hand out twice."""
    return max(1.0, visibility_timeout - task_time_limit)


def countdown(attempt: int, base: float, longest: float) -> float:
    """The wait after failed attempt ``attempt`` (1-based): ``base * 2**(attempt-1)``, at most
    ``longest``."""
    return float(min(base * 2 ** min(attempt - 1, 64), longest))


def claim_ttl(attempts: int, longest: float, timeout: float) -> int:
    """How long a delivery's claim is kept: past its whole retry chain, a day at least."""
    return int(max(CLAIM_FLOOR, attempts * (longest + timeout) + 3600))


def claim(client: redis.Redis, keys: KeySpace, delivery: str, task_id: str, ttl: int) -> bool:
    """Whether ``task_id`` posts ``delivery``: the first task id to claim it does (and keeps
    doing so across its own retries and redeliveries); another task id does not."""
    key = keys.alert_claim(delivery)
    if client.set(key, task_id, nx=True, ex=ttl):
        return True
    return client.get(key) == task_id
