"""Leader election with a fenced lease.

One key holds ``node|epoch`` with a TTL. Taking the lease bumps a counter, the *epoch*, so every
tenure has a unique token. A background thread renews the lease every third of its TTL, so a long
tick (a big dispatch burst) cannot lose it. Every write a leader makes to the schedule is a Lua
script that first compares the lease key with its token: a leader that was paused (SIGSTOP, a GC
stall) and resumes after another beat took over finds the token changed and writes nothing. That
comparison, in the same atomic script as the write, is the fence; the local ``is_leader`` flag is
only an optimisation. Losing the lease never crashes beat: it steps down and tries again later.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis

from config.keys import KeySpace
from erp_sync.infra import lua

log = logging.getLogger("erp_sync.beat.lease")


PENDING = "pending"  # the placeholder lease_acquire.lua holds while it numbers the epoch


def holder_node(value: object) -> str | None:
    """The node id in a stored lease value (``"<node>|<epoch>"``), ``None`` when nobody leads."""
    if not value or value == PENDING:
        return None
    return str(value).rpartition("|")[0] or None


class Lease:
    """This node's view of the leader lease; ``token`` is set while it believes it leads."""

    def __init__(self, client: redis.Redis, keys: KeySpace, node: str, ttl: float) -> None:
        self.client, self.keys, self.node = client, keys, node
        self.ttl_ms = max(int(ttl * 1000), 300)
        self.token: str | None = None
        self._renewed_at = 0.0
        self._acquire = lua.load(client, "lease_acquire")
        self._renew = lua.load(client, "lease_renew")
        self._release = lua.load(client, "compare_and_delete")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        # Past the TTL without a successful renewal we may have been replaced: behave as not.
        with self._lock:
            fresh = time.monotonic() - self._renewed_at < self.ttl_ms / 1000
            return self.token is not None and fresh

    def try_acquire(self) -> bool:
        token = self._acquire(
            keys=[self.keys.beat_leader, self.keys.beat_epoch], args=[self.node, self.ttl_ms]
        )
        if not token:
            return False
        with self._lock:
            self.token = str(token)
            self._renewed_at = time.monotonic()
        log.info("beat %s took the lease (token %s)", self.node, token)
        return True

    def renew(self) -> bool:
        token = self.token
        if token is None:
            return False
        started = time.monotonic()
        try:
            ok = bool(self._renew(keys=[self.keys.beat_leader], args=[token, self.ttl_ms]))
        except redis.RedisError as exc:
            log.warning("beat %s could not renew its lease: %s", self.node, exc)
            return self.is_leader
        with self._lock:
            if ok and self.token == token:
                self._renewed_at = started
            elif self.token == token:
                self.token = None
                log.warning(
                    "beat %s lost the lease (another beat leads now); standing by", self.node
                )
        return ok

    def release(self) -> None:
        token, self.token = self.token, None
        if token:
            with contextlib.suppress(redis.RedisError):  # it expires on its own anyway
                self._release(keys=[self.keys.beat_leader], args=[token])

    def start_renewing(self) -> None:
        """Renew in the background, independent of how long a tick takes."""
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        self.release()

    def _run(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            if self.token is not None:
                self.renew()
