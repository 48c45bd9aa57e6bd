"""The app's own periodic tasks (Celery's ``beat_schedule``), sent by the leader only.

Celery users add periodic work the usual way (``app.conf.beat_schedule = {"nightly-cleanup":
{"task": ..., "schedule": crontab(...), "args": ..., "options": {"queue": ...}}}``). Celery's
stock schedulers keep each entry's last run in the beat's memory or a local file, so two beats
would both send it and a new beat starts from scratch. Here the last run of every entry lives in
Redis (``<prefix>:beat:static``), and a run is sent by ``static_dispatch.lua``: fenced by the
leader lease and only if the stored last run is still the one this beat read. So only the leader
sends, each run at most once, and after a failover the new leader continues from the stored last
run (an overdue entry runs once, as Celery does after downtime, not once per missed period).

Time is the engine's clock, handed to each schedule as its ``nowfun``. An entry never seen before
starts its period at the first leader's first look (Celery's behaviour for a new entry). Options
other than ``queue`` and ``expires`` are not supported and are logged once at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery
from celery.schedules import BaseSchedule, maybe_schedule

from config.keys import KeySpace
from erp_sync.beat.messages import MessageFactory
from erp_sync.infra import lua

log = logging.getLogger("erp_sync.beat")
SUPPORTED_OPTIONS = frozenset({"queue", "expires"})
NOT_LEADER = -1


@dataclass(frozen=True)
class StaticEntry:
    """One ``beat_schedule`` entry, with the queue its messages go to."""

    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str
    expires: float | None


def read_entries(app: Celery, clock: Callable[[], float]) -> list[StaticEntry]:
    """The app's ``beat_schedule`` as entries whose schedules read ``clock``."""

    def now() -> datetime:
        return datetime.fromtimestamp(clock(), UTC)

    entries = []
    config: Mapping[str, Mapping[str, Any]] = app.conf.beat_schedule or {}
    for name, raw in sorted(config.items()):
        options = dict(raw.get("options") or {})
        ignored = sorted(set(options) - SUPPORTED_OPTIONS)
        if ignored:
            log.warning(
                "beat_schedule entry %r: options %s are not supported and are ignored",
                name,
                ", ".join(ignored),
            )
        schedule = maybe_schedule(raw["schedule"], raw.get("relative", False), app=app)
        schedule.nowfun = now
        route = app.amqp.router.route(
            {}, raw["task"], args=raw.get("args") or (), kwargs=raw.get("kwargs") or {}
        )
        queue = options.get("queue") or route["queue"].name
        expires = options.get("expires")
        entries.append(
            StaticEntry(
                name=name,
                task=raw["task"],
                schedule=schedule,
                args=tuple(raw.get("args") or ()),
                kwargs=dict(raw.get("kwargs") or {}),
                queue=str(queue),
                expires=float(expires) if expires is not None else None,
            )
        )
    return entries


def run_task_id(name: str, at: float) -> str:
    """The task id of an entry's run: the same run always has the same id (Flower shows it)."""
    return f"beat:{name}:{int(at * 1000)}"


class StaticSchedule:
    """The leader's view of the static entries' last runs; ``tick`` sends what is due."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        entries: list[StaticEntry],
        messages: MessageFactory,
        clock: Callable[[], float],
    ) -> None:
        self.client, self.keys, self.entries = client, keys, entries
        self.messages, self.clock = messages, clock
        self._send = lua.load(client, "static_dispatch")
        self._last: dict[str, str] | None = None  # name -> stored last run ('' = none)

    def load(self) -> None:
        """Read every entry's last run (on election, or after another beat moved one)."""
        if not self.entries:
            self._last = {}
            return
        names = [e.name for e in self.entries]
        stored = self.client.hmget(self.keys.beat_static, names)
        self._last = {
            n: str(v) if v is not None else "" for n, v in zip(names, stored, strict=True)
        }

    def tick(self, token: str) -> float | None:
        """Send every due entry; return seconds until the next one is due (None: no entries).

        Returns -1.0 when the lease was lost (the caller steps down).
        """
        if not self.entries:
            return None
        if self._last is None:
            self.load()
        assert self._last is not None
        now = self.clock()
        wait = float("inf")
        for entry in self.entries:
            last = self._last.get(entry.name, "")
            if not last:  # first sight: the entry's period starts now (Celery's default)
                result = self._claim(token, entry, "", now, message=None)
            else:
                due, next_in = entry.schedule.is_due(datetime.fromtimestamp(float(last), UTC))
                if due:
                    result = self._claim(token, entry, last, now, self._message(entry, now))
                else:
                    wait = min(wait, next_in)
                    continue
            if result == NOT_LEADER:
                return -1.0
            if result == 0:  # another beat moved it: re-read, decide again next tick
                self.load()
                wait = 0.0
                continue
            _due, next_in = entry.schedule.is_due(datetime.fromtimestamp(now, UTC))
            wait = min(wait, next_in)
        return wait

    def _message(self, entry: StaticEntry, now: float) -> str:
        return self.messages.build_task(
            entry.task,
            entry.args,
            entry.kwargs,
            run_task_id(entry.name, now),
            entry.queue,
            expires=_expiry(entry, now),
        )

    def _claim(
        self, token: str, entry: StaticEntry, last: str, now: float, message: str | None
    ) -> int:
        """Record ``now`` as the entry's last run and queue ``message`` (if any), fenced."""
        at = repr(now)
        if message is None:  # first sight: only start the period, send nothing
            added = self.client.hsetnx(self.keys.beat_static, entry.name, at)
            if not added:
                return 0
            assert self._last is not None
            self._last[entry.name] = at
            return 1
        result = int(
            self._send(
                keys=[self.keys.beat_leader, self.keys.beat_static, self.keys.queue(entry.queue)],
                args=[token, entry.name, last, at, message],
            )
        )
        if result == 1:
            assert self._last is not None
            self._last[entry.name] = at
            log.info(
                "sent beat_schedule entry=%s task=%s id=%s",
                entry.name,
                entry.task,
                run_task_id(entry.name, now),
            )
        return result


def _expiry(entry: StaticEntry, now: float) -> datetime | None:
    if entry.expires is None:
        return None
    return datetime.fromtimestamp(now, UTC) + timedelta(seconds=entry.expires)
