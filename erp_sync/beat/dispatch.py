"""Dispatching due entries: read a batch, plan each slot, build its messages, and queue them in
the fenced ``due_dispatch.lua`` call that advances the entries (see ``messages.py`` for why
beat builds the messages itself).

One log line per batch names every slot it sent (``grep acme:vendors@`` finds each); per-slot
lines are at DEBUG. ``task-sent`` events go to ``events.py``'s thread, off this path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import redis

from config.keys import KeySpace
from config.members import split_due_member
from config.models import SyncKind
from erp_sync.beat.changes import FeedWatcher
from erp_sync.beat.events import SentEvents
from erp_sync.beat.index import DueIndex
from erp_sync.beat.lease import Lease
from erp_sync.beat.messages import MessageFactory
from erp_sync.beat.plan import Dispatch, plan_dispatch
from erp_sync.beat.tuning import EngineConfig
from erp_sync.infra.slots import slot_iso
from erp_sync.schedule.applied import Applied

log = logging.getLogger("erp_sync.beat")


class Dispatcher:
    """Sends what is due, batch after batch, as the leader holding ``lease``."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        config: EngineConfig,
        index: DueIndex,
        lease: Lease,
        messages: MessageFactory,
        events: SentEvents,
        clock: Callable[[], float],
        watcher: FeedWatcher,
        applied: Callable[[object], Applied | None],
        lost: Callable[[], None],
    ) -> None:
        self.client, self.keys, self.config = client, keys, config
        self.index, self.lease, self.messages, self.events = index, lease, messages, events
        self.clock, self.watcher, self.applied, self.lost = clock, watcher, applied, lost

    def run(self) -> bool:
        """Dispatch due entries for up to ``budget`` seconds; True if more are still due."""
        started = time.monotonic()
        while self.lease.token is not None:
            now = self.clock()
            due = self.index.due(now, self.config.due_batch)
            if not due:
                return False
            if not self._batch(self.lease.token, due, now):
                return False
            if len(due) < self.config.due_batch:
                return False
            if self.watcher.event.is_set() or time.monotonic() - started > self.config.budget:
                return True  # a change is waiting (or the budget is spent): apply it first
        return False

    def _batch(self, token: str, due: Sequence[tuple[str, float]], now: float) -> bool:
        entries: list[tuple[str, float, str, SyncKind]] = []
        for entry, score in due:
            try:
                company, kind = split_due_member(entry)
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
        applied = {c: self.applied(r) for c, r in zip(companies, replies[0], strict=True)}
        n = len(project_level)
        projects = {
            e: p if isinstance(p, list) else []  # wrong type: no projects to fan out to
            for (e, _), p in zip(project_level, replies[1 : n + 1], strict=True)
        }
        for (e, _), out in zip(job_costs, replies[n + 1 :], strict=True):
            if isinstance(out, set):
                projects[e] = [p for p in projects[e] if p not in out]
        plans = []
        for entry, score, company, _ in entries:
            try:
                plans.append(
                    plan_dispatch(
                        entry,
                        score,
                        applied.get(company),
                        [str(p) for p in projects.get(entry, [])],
                        now,
                    )
                )
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
            self.lost()
            return False
        sent: list[str] = []
        events: list[tuple[str, SyncKind, Sequence[str | None], float]] = []
        tasks = 0
        detail = log.isEnabledFor(logging.DEBUG)
        for (d, _queue, msgs), flag in zip(chunk, flags, strict=True):
            if flag == "s":  # the invariant held: whatever computed this slot, it went once
                log.warning(
                    "refused stale slot company=%s sync=%s slot=%s (already at or "
                    "before the last slot dispatched); next=%s",
                    d.company,
                    d.kind.value,
                    slot_iso(d.slot),
                    slot_iso(d.next_score or 0),
                )
            elif flag == "d" and msgs and self.events.enabled:
                events.append(
                    (d.company, d.kind, d.projects if d.kind.project_level else (None,), d.slot)
                )
            if flag == "d" and self.config.log_dispatches:
                sent.append(f"{d.member}@{slot_iso(d.slot)}x{len(msgs)}")
                tasks += len(msgs)
                if detail:
                    log.debug(
                        "dispatched company=%s sync=%s slot=%s tasks=%d next=%s",
                        d.company,
                        d.kind.value,
                        slot_iso(d.slot),
                        len(msgs),
                        slot_iso(d.next_score) if d.next_score else "-",
                    )
        self.events.add(events)
        held = [
            f"{d.member}@{slot_iso(d.slot)}"
            for (d, _, _), f in zip(chunk, flags, strict=True)
            if f == "p"
        ]
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
