"""Every beat's heartbeat in ``<prefix>:beat:nodes`` (what ``status`` and the metrics show), and
the leader's pruning of beats that died without a clean shutdown (a fresh node id per start)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable

import redis

from config.keys import KeySpace

log = logging.getLogger("erp_sync.beat")

NODE_PRUNE_EVERY = 30.0  # seconds between the leader's looks for dead beats' heartbeats
NODE_STALE_AFTER = 120.0  # a beat silent this long (and 20 leases) is forgotten


def new_node_id() -> str:
    """A beat's node id, unique per start: ``<host>:<pid>:<random>`` (``pid_of`` reads it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def pid_of(node: str) -> int:
    """The process id in a node id made by ``new_node_id``."""
    return int(node.split(":")[-2])


class Heartbeats:
    """Writes this beat's heartbeat at most once a second; as leader, prunes dead beats."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        node: str,
        clock: Callable[[], float],
        lease_seconds: float,
    ) -> None:
        self.client, self.keys, self.node, self.clock = client, keys, node, clock
        self.lease_seconds = lease_seconds
        self._at = 0.0
        self._pruned_at = 0.0

    def beat(self, role: str) -> None:
        now = self.clock()
        if now - self._at < 1.0:
            return
        self._at = now
        self.client.hset(
            self.keys.beat_nodes,
            self.node,
            json.dumps(
                {"role": role, "last_tick": now, "pid": os.getpid(), "host": socket.gethostname()}
            ),
        )
        if role == "leader" and now - self._pruned_at >= NODE_PRUNE_EVERY:
            self._pruned_at = now
            self.prune(now)

    def prune(self, now: float) -> list[str]:
        """Forget beats whose heartbeat stopped long ago (each start is a new node id, and a
        beat that died without a clean shutdown never removes its own entry)."""
        stale = []
        for node, raw in self.client.hgetall(self.keys.beat_nodes).items():
            try:
                last = float(json.loads(raw)["last_tick"])
            except (ValueError, KeyError, TypeError):
                last = 0.0  # unreadable: as good as dead
            if now - last > max(NODE_STALE_AFTER, 20 * self.lease_seconds):
                stale.append(str(node))
        if stale:
            self.client.hdel(self.keys.beat_nodes, *stale)
            log.info(
                "beat %s: forgot %d beat(s) silent for over %.0f s: %s",
                self.node,
                len(stale),
                NODE_STALE_AFTER,
                ", ".join(stale),
            )
        return stale

    def forget(self) -> None:
        """Remove this beat's own entry (a clean shutdown)."""
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(self.keys.beat_nodes, self.node)
