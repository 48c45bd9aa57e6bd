"""The beat engine: lead (or stand by), apply changes, dispatch due slots. One ``step`` per tick.

Independent of Celery's ``Scheduler`` class so it can be driven directly by tests and benchmarks;
``beat_schedule.RedisScheduler`` adapts it to ``celery beat``.

A step, as leader, on Redis time read at its start: apply every change waiting on the feed (a
trimmed feed means a full rebuild); dispatch due entries in batches for at most ``budget``
seconds (so a change arriving during a burst waits for one batch, not the whole burst); send the
app's own ``beat_schedule`` entries that are due (``static.py``); when nothing more is due, run
one slice of the self-healing sweep if its time has come (``sweep.py``); then wait until the
next entry, static entry or slice is due (at most ``max_block`` seconds) or until the feed
watcher signals a change, whichever comes first. A change therefore wakes beat at once rather
than at its next poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import redis
from celery import Celery

from config.keys import KeySpace
from erp_sync.beat.apply import Applier, Rebuild
from erp_sync.beat.changes import ChangeFeed, FeedWatcher
from erp_sync.beat.dispatch import Dispatcher
from erp_sync.beat.events import SentEvents
from erp_sync.beat.index import DueIndex
from erp_sync.beat.lease import Lease
from erp_sync.beat.messages import MessageFactory
from erp_sync.beat.nodes import Heartbeats, new_node_id, pid_of
from erp_sync.beat.static import StaticSchedule, read_entries
from erp_sync.beat.sweep import Sweeper
from erp_sync.beat.tuning import EngineConfig
from erp_sync.control.inputs import os_user
from erp_sync.control.pause import PauseKeeper, Pauses
from erp_sync.control.store import SettingsStore
from erp_sync.infra.clock import RedisClock

__all__ = ["BeatEngine", "EngineConfig", "new_node_id", "pid_of"]

log = logging.getLogger("erp_sync.beat")


class BeatEngine:
    def __init__(
        self,
        app: Celery,
        client: redis.Redis,
        keys: KeySpace,
        config: EngineConfig,
        clock: Callable[[], float] | None = None,
        node: str | None = None,
        lease_client: redis.Redis | None = None,
    ) -> None:
        self.client, self.keys, self.config = client, keys, config
        # Redis server time unless a test hands in its own clock (DESIGN: one clock).
        self.clock: Callable[[], float] = clock or RedisClock(client)
        self.node = node or new_node_id()
        # The lease may have a client of its own with a short socket timeout: a renewal stuck
        # on a half-open connection must fail fast, not outlive the lease it renews.
        self.lease = Lease(lease_client or client, keys, self.node, config.lease_seconds)
        self.index = DueIndex(client, keys)
        self.feed = ChangeFeed(client, keys)
        self.watcher = FeedWatcher(client, keys)
        self.messages = MessageFactory(app, keys, origin=f"beat@{self.node}")
        self.events = SentEvents(app)  # task-sent for Flower, off the dispatch path
        self.static = StaticSchedule(
            client, keys, read_entries(app, self.clock), self.messages, self.clock
        )
        self._static_wait: float | None = None  # seconds until a static entry is due
        self.sweeper = Sweeper(
            client, keys, self.index, self.clock, config.seconds_per_hour, config.sweep_seconds
        )
        # Ends the pauses whose --until has come (audited as "beat"), fenced by the lease.
        self.pauses = PauseKeeper(
            Pauses(SettingsStore(client, keys, os_user=os_user())), keys.beat_leader, self.clock
        )
        self.applier = Applier(client, keys, self.index, self.clock, config.seconds_per_hour)
        self.dispatcher = Dispatcher(
            client,
            keys,
            config,
            self.index,
            self.lease,
            self.messages,
            self.events,
            self.clock,
            self.watcher,
            self.applier.applied,
            self._lost,
        )
        self.cursor: str | None = None
        self.heartbeats = Heartbeats(client, keys, self.node, self.clock, config.lease_seconds)
        self._threads_started = False
        self._peeked: tuple[float | None] | None = None  # next due time, when known this tick
        self._rebuild: Rebuild | None = None  # a full rebuild in progress, a few batches a step

    # --- the step ---------------------------------------------------------------------------
    def step(self) -> float:
        """Do one round of work; return how long the caller should sleep before the next."""
        if not self.lease.is_leader:
            self.cursor, self._rebuild = None, None
            # A stale local view (renewal replies lost) is confirmed by renewing the token we
            # hold; only when that fails is the lease taken afresh, or this beat stands by.
            if not (self.lease.token and self.lease.renew()) and not self.lease.try_acquire():
                self._heartbeat("standby")
                return self.config.lease_seconds / 6
        if self.cursor is None and self._rebuild is None:
            if isinstance(self.clock, RedisClock):
                self.clock.refresh()
            # Also after an error half-way through a previous election: never lead blind.
            self._on_elected()
        self.watcher.event.clear()  # cleared before reading: a later change sets it again
        # One round trip decides an idle tick: Redis time, the feed after the cursor (with its
        # trim check) and the next due time.
        read, upcoming = self._read_tick()
        rebuilt = self._rebuild_slices()
        applied = self.apply_changes(read)
        more = self.dispatch_due(None if applied or rebuilt else upcoming)
        self.send_static()
        if self.lease.token is not None:
            for field in self.pauses.tick(self.lease.token):
                log.info(
                    "resumed %s: its pause ended (--until); it continues at its next slot",
                    "the fleet" if field == "*" else f"company={field}",
                )
        token = self.lease.token
        # A full batch of changes means more are waiting: go on at once (a storm's backlog
        # must not wait for the next wake-up), as while a rebuild runs or entries are due.
        busy = more or self._rebuild is not None or applied >= self.config.change_batch
        if not busy and token is not None and not self.sweeper.tick(token):
            self._lost()  # the sweep's repair was fenced out
        self._heartbeat("leader")
        if not busy and self.lease.is_leader:
            self.watcher.event.wait(self._block_for())
        return 0.0

    def _on_elected(self) -> None:
        if not self._threads_started:
            self.lease.start_renewing()
            self.watcher.start()
            self._threads_started = True
            self.check_eviction_policy()
        self.static.load()
        saved = self.feed.saved_cursor()
        if saved is None or self.feed.lost_since(saved):
            self._begin_rebuild("no change cursor yet" if saved is None else "changes were trimmed")
        else:
            self.cursor = saved

    def check_eviction_policy(self) -> str | None:
        """Log loudly when Redis may evict keys: an evicted schedule key is a lost schedule."""
        try:
            policy = str(self.client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
        except redis.ResponseError:  # CONFIG disabled (managed Redis): cannot tell
            log.info("beat: cannot read Redis maxmemory-policy; make sure it is noeviction")
            return None
        if policy and policy != "noeviction":
            log.error(
                "beat: Redis maxmemory-policy is %s: under memory pressure Redis may evict "
                "schedule, settings or lease keys; set it to noeviction",
                policy,
            )
        return policy

    def _block_for(self) -> float:
        # An idle tick already peeked at the next due time; only after dispatching is it re-read.
        upcoming = self._peeked[0] if self._peeked is not None else self.index.next_due()
        until = self.config.max_block if upcoming is None else upcoming - self.clock()
        if self._static_wait is not None:
            until = min(until, self._static_wait)
        until = min(until, self.sweeper.next_in())
        return max(0.0, min(self.config.max_block, until))

    # --- changes ----------------------------------------------------------------------------
    def _read_tick(
        self,
    ) -> tuple[tuple[list[tuple[str, str]], bool] | None, tuple[float | None] | None]:
        """Redis time (set on the clock), the feed read and the next due time, pipelined."""
        cursor = self.cursor
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        if cursor is not None:
            self.feed.queue_read(pipe, cursor, self.config.change_batch)
        pipe.zrange(self.keys.due, 0, 0, withscores=True)
        replies = pipe.execute(raise_on_error=False)
        for reply in (replies[0], replies[-1]):
            if isinstance(reply, Exception):
                raise reply
        if isinstance(self.clock, RedisClock):
            self.clock.set(*replies[0])
        read = self.feed.parse_read(replies[1:3], cursor) if cursor is not None else None
        first = replies[-1]
        return read, (float(first[0][1]) if first else None,)

    def apply_changes(self, read: tuple[list[tuple[str, str]], bool] | None = None) -> int:
        """Apply what the feed holds after the cursor (without waiting), a batch at a time
        for up to ``budget`` seconds; ``read`` is the first batch's feed read when the caller
        already made it (``_read_tick``). Returns how many changes were applied."""
        started, total = time.monotonic(), 0
        while True:
            applied = self._apply_batch(read)
            total += applied
            if (
                applied < self.config.change_batch
                or self.cursor is None
                or time.monotonic() - started > self.config.budget
            ):
                return total
            read = None

    def _apply_batch(self, read: tuple[list[tuple[str, str]], bool] | None) -> int:
        token, cursor = self.lease.token, self.cursor
        if token is None or cursor is None:
            return 0
        batch, lost = read if read is not None else self.feed.read(cursor, self.config.change_batch)
        if lost:  # the stream was trimmed past our cursor while we ran: changes were missed
            self.cursor = None
            self._begin_rebuild(
                f"the change stream was trimmed past cursor {cursor} (more "
                "changes than ERP_SYNC_CHANGE_STREAM_MAXLEN arrived while behind)"
            )
            return 0
        if not batch:
            return 0
        self.apply_companies(token, dict.fromkeys(c for _, c in batch if c), batch[-1][0])
        return len(batch)

    def resync(self) -> None:
        """Rebuild every company's entries now, to the end (tests and benchmarks)."""
        self._begin_rebuild("a full rebuild was asked for")
        while self._rebuild is not None and self.lease.token is not None:
            self._rebuild_slice()

    def _begin_rebuild(self, why: str) -> None:
        """Start rebuilding every company's entries (first start, or changes lost to trimming).

        It runs for up to ``budget`` a step, so entries that are already valid keep being
        dispatched meanwhile; changes are applied again once it is done (from the stream's head
        at its start, replayed idempotently).
        """
        self._rebuild = Rebuild.begin(self.client, self.keys, self.feed)
        log.warning(
            "beat %s: %s; rebuilding every company's schedule (%d companies, %d a batch)",
            self.node,
            why,
            len(self._rebuild.ids),
            self.config.change_batch,
        )

    def _rebuild_slices(self) -> int:
        """Batches of the rebuild in progress for up to ``budget`` seconds, then the step goes
        on to dispatch what is due (entries already valid never wait for the whole rebuild)."""
        started, total = time.monotonic(), 0
        while self._rebuild is not None:
            total += self._rebuild_slice()
            if time.monotonic() - started > self.config.budget:
                break
        return total

    def _rebuild_slice(self) -> int:
        """One batch of the rebuild in progress; the last one stores the cursor."""
        token, rebuild = self.lease.token, self._rebuild
        if token is None or rebuild is None:
            self._rebuild = None  # fenced out half-way: the new leader rebuilds
            return 0
        batch, cursor = rebuild.next_batch(self.config.change_batch)
        self.apply_companies(token, batch, cursor)  # the last batch moves the cursor
        if rebuild.done:
            if self.lease.token is not None:
                log.info(
                    "beat %s: rebuilt %d companies' schedules in %.2f s",
                    self.node,
                    len(rebuild.ids),
                    time.monotonic() - rebuild.started,
                )
            self._rebuild = None
        return len(batch)

    def apply_companies(self, token: str, companies: Iterable[str], cursor: str | None) -> None:
        if not self.applier.apply(token, companies, cursor):
            self._lost()
        elif cursor:
            self.cursor = cursor

    # --- dispatch ---------------------------------------------------------------------------
    def send_static(self) -> None:
        """Send the app's own ``beat_schedule`` entries that are due (leader only, fenced)."""
        token = self.lease.token
        self._static_wait = None
        if token is None:
            return
        wait = self.static.tick(token)
        if wait is not None and wait < 0:
            self._lost()
            return
        self._static_wait = wait

    def dispatch_due(self, peeked: tuple[float | None] | None = None) -> bool:
        """Dispatch due entries for up to ``budget`` seconds; True if more are still due.

        ``peeked`` is the next due time when the caller read it this tick (and applied nothing
        since); otherwise one read decides the common idle case.
        """
        upcoming = peeked[0] if peeked is not None else self.index.next_due()
        self._peeked = (upcoming,)  # tells _block_for how long to wait
        if upcoming is None or upcoming > self.clock():
            return False
        self._peeked = None
        return self.dispatcher.run()

    # --- leadership and status --------------------------------------------------------------
    def _lost(self) -> None:
        log.warning("beat %s: fenced out (no longer the leader); nothing was written", self.node)
        self.lease.token = None
        self.cursor = None
        self._rebuild = None

    def _heartbeat(self, role: str) -> None:
        self.heartbeats.beat(role)

    def close(self) -> None:
        """Step down cleanly so a standby takes over at once instead of after the TTL."""
        self.watcher.stop()
        self.events.close()
        self.lease.stop()
        self.heartbeats.forget()
