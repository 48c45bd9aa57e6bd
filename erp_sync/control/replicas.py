"""Replica acknowledgement of an admin change: ``WAIT`` after its transaction commits.

Redis replicates asynchronously: a write the primary acknowledged is lost if the primary dies
before a replica has it, and Sentinel then promotes a replica without it. So after an admin
change commits (settings, users, connections and token rotations, pauses, alert rules,
companies and projects), the store asks Redis to ``WAIT`` until ``min(wanted, online replicas)``
replicas have acknowledged it, at most ``timeout_ms``; fewer in time is ``NotReplicated``,
reported to the admin rather than silently accepted.

``WAIT`` counts acknowledgements of the *calling connection's* last write, so it must run on the
connection that ran EXEC (``erp_sync.control.unit`` keeps it checked out until then); on any
other connection it would answer at once for an older offset. The online replicas come from
``INFO replication``, read at most every ``CACHE_SECONDS`` per connection pool, so a lone Redis
(no replicas) never waits and pays one ``INFO`` round trip per process and interval.

What ``INFO`` answers instead of a count is cached for the same interval, never for good:
- ``unknown command`` (fakeredis; ``INFO`` renamed away with ``rename-command``): the server
  cannot say, and such a server has no replicas this code can see: nothing to wait for;
- anything else (``NOPERM`` from an ACL user without ``+info``, a proxy's error): the count is
  unknown, so the change waits for all ``wanted`` replicas (``WAIT <wanted>``) and too few in
  time is ``NotReplicated``. Counting none would skip the wait silently (it did: one ``NOPERM``
  turned the replica wait off for the life of the process).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

import redis
from redis.connection import Connection

from config.env import Settings
from erp_sync.errors import NotReplicated

CACHE_SECONDS = 2.0
# Per connection pool: (replicas online, or None when INFO would not say, and when read). A
# replica that connects within the interval is waited for from the next read on; one that
# disconnects makes a WAIT in between come back short, which is reported (the change did not
# reach it).
_online: weakref.WeakKeyDictionary[Any, tuple[int | None, float]] = weakref.WeakKeyDictionary()
_NO_INFO = "unknown command"  # Redis's answer to a command it lacks or that was renamed away


@dataclass(frozen=True)
class ReplicaAck:
    """How many replica acknowledgements a change waits for, and for how long (0: none)."""

    wanted: int
    timeout_ms: int = 1000

    @classmethod
    def from_settings(cls, env: Settings) -> ReplicaAck:
        return cls(env.redis_wait_replicas, env.redis_wait_timeout_ms)

    def confirm(self, client: redis.Redis, connection: Connection, result: object = None) -> None:
        """``WAIT`` on ``connection`` (the one that just committed) for ``min(wanted, online
        replicas)``; ``NotReplicated`` (carrying the action's ``result``) if fewer acknowledged
        in time. The replica count is read on the same connection, so a lone Redis pays one
        round trip (no second connection) and only when the cached count is stale."""
        if self.wanted <= 0:
            return
        online = online_replicas(client, connection)
        needed = self.wanted if online is None else min(self.wanted, online)
        if needed == 0:
            return
        connection.send_command("WAIT", needed, self.timeout_ms)  # type: ignore[no-untyped-call]
        acked = int(connection.read_response())
        if acked < needed:
            raise NotReplicated(acked, needed, self.timeout_ms, result)


NEVER = ReplicaAck(0)


def online_replicas(client: redis.Redis, connection: Connection) -> int | None:
    """Replicas streaming from ``client``'s primary (``state=online``), cached per pool;
    read with ``INFO replication`` on ``connection`` when stale. None: unknown (``INFO`` was
    refused, e.g. ``NOPERM``): wait for every wanted replica."""
    pool = client.connection_pool
    now = time.monotonic()
    cached = _online.get(pool)
    if cached is not None and now - cached[1] < CACHE_SECONDS:
        return cached[0]
    count: int | None
    try:
        connection.send_command("INFO", "replication")  # type: ignore[no-untyped-call]
        info = connection.read_response()
    except redis.ResponseError as exc:  # the reply was read: the connection stays usable
        count = 0 if _NO_INFO in str(exc).lower() else None
    else:
        text = info.decode() if isinstance(info, bytes) else str(info)
        count = sum(
            1
            for line in text.splitlines()
            if line.startswith("slave") and ":" in line and "state=online" in line.split(":", 1)[1]
        )
    _online[pool] = (count, now)
    return count
