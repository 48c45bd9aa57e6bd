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

import contextlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import redis
from celery import Celery

from config.keys import KeySpace
from config.models import Company, StoredSettings, SyncKind, parse
from erp_sync.applied import Applied, parse_applied
from erp_sync.beat.changes import ChangeFeed, FeedWatcher
from erp_sync.beat.events import SentEvents
from erp_sync.beat.index import NOT_LEADER, DueIndex
from erp_sync.beat.lease import Lease
from erp_sync.beat.plan import (
    CompanyPlan,
    Dispatch,
    member,
    plan_company,
    plan_dispatch,
    split_member,
)
from erp_sync.beat.publisher import MessageFactory
from erp_sync.beat.static import StaticSchedule, read_entries
from erp_sync.beat.sweep import Sweeper
from erp_sync.clock import RedisClock
from erp_sync.errors import CorruptRecord
from erp_sync.inputs import os_user
from erp_sync.pause import PauseKeeper, Pauses
from erp_sync.slots import slot_iso
from erp_sync.store import SettingsStore

log = logging.getLogger("erp_sync.beat")


def new_node_id() -> str:
    """A beat's node id, unique per start: ``<host>:<pid>:<random>`` (``pid_of`` reads it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def pid_of(node: str) -> int:
    """The process id in a node id made by ``new_node_id``."""
    return int(node.split(":")[-2])


NODE_PRUNE_EVERY = 30.0  # seconds between the leader's looks for dead beats' heartbeats
NODE_STALE_AFTER = 120.0  # a beat silent this long (and 20 leases) is forgotten


@dataclass
class _Rebuild:
    """A full rebuild in progress: the companies, how far it got, the stream head at its start."""

    ids: list[str]
    head: str
    started: float
    pos: int = 0


@dataclass
class EngineConfig:
    seconds_per_hour: float = 3600.0
    lease_seconds: float = 3.0
    due_batch: int = 250  # entries per dispatch script call
    message_batch: int = 5000  # messages per dispatch script call (an entry is never split)
    budget: float = 0.05  # seconds of dispatching before the feed is checked again
    max_block: float = 1.0  # longest wait on the feed when nothing is due
    change_batch: int = 500
    sweep_seconds: float = 60.0  # one full pass of the schedule check over every company
    log_dispatches: bool = True


class BeatEngine:
    def __init__(self, app: Celery, client: redis.Redis, keys: KeySpace, config: EngineConfig,
                 clock: Callable[[], float] | None = None, node: str | None = None,
                 lease_client: redis.Redis | None = None) -> None:
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
        self.static = StaticSchedule(client, keys, read_entries(app, self.clock),
                                     self.messages, self.clock)
        self._static_wait: float | None = None  # seconds until a static entry is due
        self.sweeper = Sweeper(client, keys, self.index, self.clock, config.seconds_per_hour,
                               config.sweep_seconds)
        # Ends the pauses whose --until has come (audited as "beat"), fenced by the lease.
        self.pauses = PauseKeeper(Pauses(SettingsStore(client, keys, os_user=os_user())),
                                  keys.beat_leader, self.clock)
        self.cursor: str | None = None
        self._reported: set[tuple[str, int]] = set()
        self._heartbeat_at = 0.0
        self._pruned_at = 0.0
        self._threads_started = False
        self._peeked: tuple[float | None] | None = None  # next due time, when known this tick
        self._rebuild: _Rebuild | None = None  # a full rebuild in progress, a batch a step
        self._applied_seen: dict[str, Applied | None] = {}  # raw record -> parsed

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
                log.info("resumed %s: its pause ended (--until); it continues at its next slot",
                         "the fleet" if field == "*" else f"company={field}")
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
            self._begin_rebuild("no change cursor yet" if saved is None
                                else "changes were trimmed")
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
            log.error("beat: Redis maxmemory-policy is %s: under memory pressure Redis may evict "
                      "schedule, settings or lease keys; set it to noeviction", policy)
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
    def _read_tick(self) -> tuple[tuple[list[tuple[str, str]], bool] | None,
                                  tuple[float | None] | None]:
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
            if applied < self.config.change_batch or self.cursor is None or \
                    time.monotonic() - started > self.config.budget:
                return total
            read = None

    def _apply_batch(self, read: tuple[list[tuple[str, str]], bool] | None) -> int:
        token, cursor = self.lease.token, self.cursor
        if token is None or cursor is None:
            return 0
        batch, lost = read if read is not None else self.feed.read(cursor,
                                                                   self.config.change_batch)
        if lost:  # the stream was trimmed past our cursor while we ran: changes were missed
            self.cursor = None
            self._begin_rebuild(f"the change stream was trimmed past cursor {cursor} (more "
                                "changes than ERP_SYNC_CHANGE_STREAM_MAXLEN arrived while behind)")
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

        It runs one batch per step, so entries that are already valid keep being dispatched
        meanwhile; changes are applied again once it is done (from the stream's head at its
        start, replayed idempotently).
        """
        head = self.feed.head()  # taken first: changes after it are replayed, idempotently
        ids = [str(c) for c in self.client.sscan_iter(self.keys.companies, count=1000)]
        self._rebuild = _Rebuild(ids, head, time.monotonic())
        log.warning("beat %s: %s; rebuilding every company's schedule (%d companies, %d a step)",
                    self.node, why, len(ids), self.config.change_batch)

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
        batch = rebuild.ids[rebuild.pos:rebuild.pos + self.config.change_batch]
        rebuild.pos += len(batch)
        if rebuild.pos < len(rebuild.ids):
            self.apply_companies(token, batch, None)
            return len(batch)
        self.apply_companies(token, batch, rebuild.head)  # the last batch moves the cursor
        if self.lease.token is not None:
            log.info("beat %s: rebuilt %d companies' schedules in %.2f s", self.node,
                     len(rebuild.ids), time.monotonic() - rebuild.started)
        self._rebuild = None
        return len(batch)

    def apply_companies(self, token: str, companies: Iterable[str], cursor: str | None) -> None:
        ids = list(companies)
        now = self.clock()
        raws, old, present = self._read_companies(ids)
        plans: list[CompanyPlan] = []
        versions: dict[str, int] = {}
        moved: list[CompanyPlan] = []  # the plans that change something, named in the log
        for n, company in enumerate(ids):
            loaded = self._load(company, raws[2 * n], raws[2 * n + 1])
            if loaded is None:
                continue
            record, stored = loaded
            try:
                plans.append(plan_company(company, record, stored, old[n], now,
                                          self.config.seconds_per_hour, present[n]))
            except Exception as exc:  # one company must never stop every other's changes
                log.error("skipping company=%s: cannot plan its schedule: %s", company, exc)
                continue
            versions[company] = stored.version if stored else 0
            if plans[-1].ops or plans[-1].applied != old[n]:
                moved.append(plans[-1])
        if self.index.apply(token, plans, versions, cursor) == NOT_LEADER:
            self._lost()
            return
        if cursor:
            self.cursor = cursor
        same = len(plans) - len(moved)  # most of a rebuild: counted, not named
        if moved:  # one line per batch naming each company whose schedule moved
            log.info("applied companies=%d%s: %s", len(moved),
                     f" (and {same} unchanged)" if same else "", " ".join(
                         f"{p.company}@{versions.get(p.company)}"
                         f"({','.join(sorted(p.applied.cadences)) if p.applied else '-'})"
                         for p in moved))
        elif plans:
            log.debug("applied companies=%d, every one unchanged", len(plans))

    def _read_companies(self, ids: list[str]) -> tuple[list[object], list[Applied | None],
                                                      list[set[SyncKind]]]:
        """Each company's record and settings (flat, two per company), beat's applied record
        and the kinds it has in the due index: three commands, two round trips."""
        kinds = list(SyncKind)
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([k for c in ids for k in (self.keys.company(c), self.keys.settings(c))])
        pipe.hmget(self.keys.beat_applied, ids)
        raws, applied = pipe.execute(raise_on_error=False)
        for reply in (raws, applied):
            if isinstance(reply, Exception):
                raise reply
        found = self.index.present([member(c, k) for c in ids for k in kinds])
        missing = [i for i, raw in enumerate(raws) if raw is None]
        if missing:  # MGET reads a key of the wrong type as missing: GET tells them apart
            pipe = self.client.pipeline(transaction=False)
            for i in missing:
                pipe.get(self.keys.company(ids[i // 2]) if i % 2 == 0
                         else self.keys.settings(ids[i // 2]))
            # One company's key of the wrong Redis type must not fail the whole batch.
            for i, raw in zip(missing, pipe.execute(raise_on_error=False), strict=True):
                raws[i] = raw
        present = [{k for j, k in enumerate(kinds) if found[n * len(kinds) + j]}
                   for n in range(len(ids))]
        return raws, [self._applied(r) for r in applied], present

    def _applied(self, raw: object) -> Applied | None:
        """``parse_applied``, remembered by the raw record: most companies share a few."""
        if not isinstance(raw, str):
            return parse_applied(raw)
        if raw not in self._applied_seen:
            if len(self._applied_seen) >= 10_000:
                self._applied_seen.clear()
            self._applied_seen[raw] = parse_applied(raw)
        return self._applied_seen[raw]

    def _load(self, company: str, raw_company: object, raw_settings: object
              ) -> tuple[Company | None, StoredSettings | None] | None:
        if raw_company is None:
            return None, None
        try:
            for raw, what in ((raw_company, "company"), (raw_settings, "settings")):
                if isinstance(raw, Exception):
                    raise CorruptRecord(f"stored {what} of {company!r} is unreadable "
                                        f"({str(raw).splitlines()[0][:80]})")
            record = parse(Company, str(raw_company), f"company {company!r}")
            stored = parse(StoredSettings, str(raw_settings or ""), f"settings of {company!r}")
        except CorruptRecord as exc:
            marker = (company, hash(str(raw_settings)))
            if marker not in self._reported:  # say it once, keep serving everyone else
                self._reported.add(marker)
                log.error("skipping company=%s: %s", company, exc)
            return None
        return record, stored

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
        started = time.monotonic()
        while self.lease.token is not None:
            now = self.clock()
            due = self.index.due(now, self.config.due_batch)
            if not due:
                return False
            if not self._dispatch_batch(self.lease.token, due, now):
                return False
            if len(due) < self.config.due_batch:
                return False
            if self.watcher.event.is_set() or time.monotonic() - started > self.config.budget:
                return True  # a change is waiting (or the budget is spent): apply it first
        return False

    def _dispatch_batch(self, token: str, due: Sequence[tuple[str, float]], now: float) -> bool:
        entries: list[tuple[str, float, str, SyncKind]] = []
        for entry, score in due:
            try:
                company, kind = split_member(entry)
                if not math.isfinite(score):  # -inf would never match in the script: spin
                    raise ValueError(f"due time {score}")
            except ValueError as exc:  # a malformed member must not wedge the index
                self._drop(entry, exc)
                continue
            entries.append((entry, score, company, kind))
        companies = list(dict.fromkeys(company for _, _, company, _ in entries))
        project_level = [(e, c) for e, _, c, kind in entries if kind.project_level]
        pipe = self.client.pipeline(transaction=False)  # one round trip for everything read
        pipe.hmget(self.keys.beat_applied, companies)
        for _, company in project_level:
            pipe.hkeys(self.keys.projects(company))
        # Projects opted out of job-cost syncing leave the job-cost fan-out (read live, here).
        job_costs = [(e, c) for e, _, c, kind in entries if kind is SyncKind.JOB_COSTS]
        for _, company in job_costs:
            pipe.smembers(self.keys.job_cost_optouts(company))
        replies = pipe.execute(raise_on_error=False)
        applied = {c: self._applied(r) for c, r in zip(companies, replies[0], strict=True)}
        n = len(project_level)
        projects = {e: p if isinstance(p, list) else []  # wrong type: no projects to fan out to
                    for (e, _), p in zip(project_level, replies[1:n + 1], strict=True)}
        for (e, _), out in zip(job_costs, replies[n + 1:], strict=True):
            if isinstance(out, set):
                projects[e] = [p for p in projects[e] if p not in out]
        plans = []
        for entry, score, company, _ in entries:
            try:
                plans.append(plan_dispatch(entry, score, applied.get(company),
                                           [str(p) for p in projects.get(entry, [])], now))
            except Exception as exc:  # a malformed record must not wedge the index either
                self._drop(entry, exc)
        chunk: list[tuple[Dispatch, str, list[str]]] = []
        size = 0
        for d in plans:
            msgs = self._messages(d)
            if chunk and size + len(msgs) > self.config.message_batch:
                if not self._send(token, chunk):
                    return False
                chunk, size = [], 0
            chunk.append((d, self.messages.queue_key(d.kind), msgs))
            size += len(msgs)
        return self._send(token, chunk) if chunk else True

    def _messages(self, d: Dispatch) -> list[str]:
        if d.next_score is None:
            return []
        targets: Sequence[str | None] = d.projects if d.kind.project_level else (None,)
        return self.messages.build_many(d.company, d.kind, targets, d.slot)

    def _send(self, token: str, chunk: list[tuple[Dispatch, str, list[str]]]) -> bool:
        flags = self.index.dispatch(token, chunk)
        if flags is None:
            self._lost()
            return False
        sent: list[str] = []
        events: list[tuple[str, SyncKind, Sequence[str | None], float]] = []
        tasks = 0
        detail = log.isEnabledFor(logging.DEBUG)
        for (d, _queue, msgs), flag in zip(chunk, flags, strict=True):
            if flag == "s":  # the invariant held: whatever computed this slot, it went once
                log.warning("refused stale slot company=%s sync=%s slot=%s (already at or "
                            "before the last slot dispatched); next=%s", d.company,
                            d.kind.value, slot_iso(d.slot), slot_iso(d.next_score or 0))
            elif flag == "d" and msgs and self.events.enabled:
                events.append((d.company, d.kind,
                               d.projects if d.kind.project_level else (None,), d.slot))
            if flag == "d" and self.config.log_dispatches:
                sent.append(f"{d.member}@{slot_iso(d.slot)}x{len(msgs)}")
                tasks += len(msgs)
                if detail:
                    log.debug("dispatched company=%s sync=%s slot=%s tasks=%d next=%s",
                              d.company, d.kind.value, slot_iso(d.slot), len(msgs),
                              slot_iso(d.next_score) if d.next_score else "-")
        self.events.add(events)
        held = [f"{d.member}@{slot_iso(d.slot)}" for (d, _, _), f in zip(chunk, flags,
                                                                         strict=True) if f == "p"]
        if held:
            log.info("paused: skipped slots=%d (nothing sent): %s", len(held), " ".join(held))
        for (d, _, _), flag in zip(chunk, flags, strict=True):
            if flag == "g":
                log.info("dropped entry %s: company=%s was removed", d.member, d.company)
        if sent:  # one line per batch, every slot named: `grep acme:vendors@` finds each one
            log.info("dispatched slots=%d tasks=%d: %s", len(sent), tasks, " ".join(sent))
        return True

    def _drop(self, entry: str, exc: Exception) -> None:
        log.error("dropping malformed due entry %r: %s", entry, exc)
        self.client.zrem(self.keys.due, entry)

    # --- leadership and status --------------------------------------------------------------
    def _lost(self) -> None:
        log.warning("beat %s: fenced out (no longer the leader); nothing was written", self.node)
        self.lease.token = None
        self.cursor = None
        self._rebuild = None

    def _heartbeat(self, role: str) -> None:
        now = self.clock()
        if now - self._heartbeat_at < 1.0:
            return
        self._heartbeat_at = now
        self.client.hset(self.keys.beat_nodes, self.node, json.dumps(
            {"role": role, "last_tick": now, "pid": os.getpid(), "host": socket.gethostname()}))
        if role == "leader" and now - self._pruned_at >= NODE_PRUNE_EVERY:
            self._pruned_at = now
            self.prune_nodes(now)

    def prune_nodes(self, now: float) -> list[str]:
        """Forget beats whose heartbeat stopped long ago (each start is a new node id, and a
        beat that died without a clean shutdown never removes its own entry)."""
        stale = []
        for node, raw in self.client.hgetall(self.keys.beat_nodes).items():
            try:
                last = float(json.loads(raw)["last_tick"])
            except (ValueError, KeyError, TypeError):
                last = 0.0  # unreadable: as good as dead
            if now - last > max(NODE_STALE_AFTER, 20 * self.config.lease_seconds):
                stale.append(str(node))
        if stale:
            self.client.hdel(self.keys.beat_nodes, *stale)
            log.info("beat %s: forgot %d beat(s) silent for over %.0f s: %s", self.node,
                     len(stale), NODE_STALE_AFTER, ", ".join(stale))
        return stale

    def close(self) -> None:
        """Step down cleanly so a standby takes over at once instead of after the TTL."""
        self.watcher.stop()
        self.events.close()
        self.lease.stop()
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(self.keys.beat_nodes, self.node)

