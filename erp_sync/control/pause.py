"""Pausing a company (an admin) or the whole fleet (an operator), by hand or until a time.

A pause is one field of ``<prefix>:paused`` (the company id, or ``*`` for the fleet) and, when it
ends by itself, a member of ``<prefix>:paused:until``. Beat's dispatch script reads the hash in
the same atomic step that advances an entry (``due_dispatch.lua``): once ``pause`` returns, no
slot of the company is queued; its entries keep moving to their next slot without sending, so
``resume`` continues at the next slot with no storm of missed runs, and settings are untouched.

An ``--until`` pause is ended by the leading beat (``PauseKeeper``, a sorted-set read of what is
due, so the cost does not grow with the fleet), fenced by its lease and audited as ``beat``.
Company pauses are audited in the company's log; fleet pauses in the operator log.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import redis
from pydantic import BaseModel, ConfigDict

from config.models import parse
from erp_sync.control.access import require_admin
from erp_sync.control.inputs import user_id
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import Denied, UnitOfWork
from erp_sync.errors import InvalidInput, PermissionDenied

FLEET = "*"
MAX_PAUSE = 366 * 86_400.0
# At most 7 digits a part: more is past the one-year cap anyway, and a 400-digit number would
# overflow the float arithmetic below instead of getting the one-line error.
_DURATION = re.compile(r"(?:(\d{1,7})d)?(?:(\d{1,7})h)?(?:(\d{1,7})m)?(?:(\d{1,7})s)?")


class PauseRecord(BaseModel):
    """Who paused what, why, since and until when (``until`` None: until someone resumes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: str
    reason: str | None = None
    since: datetime
    until: datetime | None = None
    os_user: str | None = None


def parse_until(value: str, now: float) -> float:
    """``--until`` as epoch seconds: a duration (``90m``, ``2h``, ``1d12h``) or an ISO time
    (naive means UTC); it must lie in the future and within a year."""
    text = value.strip()
    match = _DURATION.fullmatch(text)
    if text and match and any(match.groups()):
        d, h, m, s = (int(g or 0) for g in match.groups())
        until = now + d * 86_400 + h * 3600 + m * 60 + s
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(
                f"--until {text[:40]!r} is neither a duration (30m, 2h, 1d) nor "
                "an ISO time (YYYY-MM-DDTHH:MM, UTC unless an offset follows)"
            ) from None
        until = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not now < until <= now + MAX_PAUSE:
        raise InvalidInput("--until must be in the future and at most a year away")
    return until


def scope(company_id: str | None) -> str:
    return FLEET if company_id is None else company_id


class Pauses:
    """Pause, resume and read pauses through the settings store's transaction and audit."""

    def __init__(self, store: SettingsStore) -> None:
        self.store, self.keys, self.client = store, store.keys, store.client

    def get(self, company_id: str | None) -> PauseRecord | None:
        raw = self.client.hget(self.keys.paused, scope(company_id))
        return None if raw is None else parse(PauseRecord, str(raw), "pause record")

    def pause(
        self, company_id: str | None, actor: str, *, reason: str | None, until: float | None
    ) -> PauseRecord:
        """Pause a company as ``actor`` (an admin), or the fleet (``company_id`` None)."""
        user_id(actor)
        if reason is not None and (len(reason) > 500 or not reason.isprintable()):
            raise InvalidInput("--reason must be at most 500 printable characters")
        if company_id is not None:
            self.store.get_company(company_id)
        record = PauseRecord(
            by=actor,
            reason=reason,
            since=self.store.clock(),
            os_user=self.store.os_user,
            until=datetime.fromtimestamp(until, UTC) if until is not None else None,
        )
        field = scope(company_id)

        def write(work: UnitOfWork) -> None:
            pipe = work.pipe
            self._check(pipe, company_id, actor)
            old = pipe.hget(self.keys.paused, field)
            work.begin()
            pipe.hset(self.keys.paused, field, record.model_dump_json())
            if until is None:
                pipe.zrem(self.keys.paused_until, field)
            else:
                pipe.zadd(self.keys.paused_until, {field: until})
            self._audit(
                work,
                company_id,
                actor,
                "pause",
                {"paused": old is not None},
                record.model_dump(mode="json", exclude={"os_user"}),
            )

        denied = (
            None
            if company_id is None
            else Denied(company_id, actor, "company.pause", {"reason": reason})
        )
        self.store.transact(self._watched(company_id), write, denied)
        return record

    def resume(self, company_id: str | None, actor: str) -> PauseRecord:
        """End a pause by hand as ``actor``; returns the pause that ended."""
        user_id(actor)
        if company_id is not None:
            self.store.get_company(company_id)
        try:
            ended = self._end(
                company_id, actor, check=lambda pipe: self._check(pipe, company_id, actor)
            )
        except PermissionDenied:
            if company_id is not None:
                self.store.record_denied(Denied(company_id, actor, "company.resume"))
            raise
        if ended is None:
            raise InvalidInput(
                f"{'the fleet' if company_id is None else repr(company_id)} is not paused"
            )
        return ended

    def _end(
        self,
        company_id: str | None,
        actor: str,
        check: Callable[[redis.client.Pipeline], None],
        extra_watch: tuple[str, ...] = (),
        due_by: float | None = None,
    ) -> PauseRecord | None:
        field = scope(company_id)

        def write(work: UnitOfWork) -> PauseRecord | None:
            pipe = work.pipe
            check(pipe)
            raw = pipe.hget(self.keys.paused, field)
            if raw is None:
                return None
            record = parse(PauseRecord, str(raw), "pause record")
            if due_by is not None and (record.until is None or record.until.timestamp() > due_by):
                return None  # re-paused meanwhile: not this pause's time yet
            work.begin()
            pipe.hdel(self.keys.paused, field)
            pipe.zrem(self.keys.paused_until, field)
            self._audit(
                work,
                company_id,
                actor,
                "resume",
                record.model_dump(mode="json", exclude={"os_user"}),
                {"automatic": due_by is not None},
            )
            return record

        # Beat's own end of a timed pause does not wait for replicas (a slow one must not stall
        # its tick); lost in a failover, the pause's due mark is lost with it and ends again.
        return self.store.transact(
            [*self._watched(company_id), *extra_watch], write, durable=due_by is None
        )

    def expire(self, now: float, lease_key: str, token: str, limit: int = 100) -> list[str]:
        """End the pauses whose time has come, as the leader holding ``token`` (fenced)."""
        due = [
            str(m)
            for m in self.client.zrangebyscore(
                self.keys.paused_until, "-inf", now, start=0, num=limit
            )
        ]
        resumed = []
        for field in due:
            company = None if field == FLEET else field

            def fenced(pipe: redis.client.Pipeline) -> None:
                if pipe.get(lease_key) != token:
                    raise _Fenced

            try:
                if self._end(company, "beat", fenced, (lease_key,), due_by=now) is not None:
                    resumed.append(field)
                else:  # no pause left under it (or re-paused for longer): drop the stale mark
                    self._drop_mark(field, now)
            except _Fenced:
                break
        return resumed

    def _drop_mark(self, field: str, now: float) -> None:
        record = self.get(None if field == FLEET else field)
        if record is None or record.until is None:
            self.client.zrem(self.keys.paused_until, field)
        elif record.until.timestamp() > now:
            self.client.zadd(self.keys.paused_until, {field: record.until.timestamp()})

    # --- plumbing ---------------------------------------------------------------------------
    def _watched(self, company_id: str | None) -> list[str]:
        keys = [self.keys.paused]
        return keys if company_id is None else [*keys, self.keys.users(company_id)]

    def _check(self, pipe: redis.client.Pipeline, company_id: str | None, actor: str) -> None:
        if company_id is None:
            return  # the fleet: an operator action (anyone with Redis access is an operator)
        if not pipe.exists(self.keys.company(company_id)):
            raise InvalidInput(f"company {company_id!r} was removed")
        require_admin(pipe, self.keys, company_id, actor)

    def _audit(
        self,
        work: UnitOfWork,
        company_id: str | None,
        actor: str,
        action: str,
        old: dict[str, object],
        new: dict[str, object],
    ) -> None:
        kind = "fleet" if company_id is None else "company"
        entry = work.entry(scope(company_id), actor, f"{kind}.{action}", old, new)
        if company_id is None:
            work.operator(entry)
        else:
            work.audit(entry)


class _Fenced(Exception):
    """The beat ending a pause is no longer the leader: it writes nothing."""


class PauseKeeper:
    """The leader's check for pauses that end by themselves, at most once a second."""

    def __init__(
        self, pauses: Pauses, lease_key: str, clock: Callable[[], float], every: float = 1.0
    ) -> None:
        self.pauses, self.lease_key, self.clock, self.every = pauses, lease_key, clock, every
        self._next_at = 0.0

    def tick(self, token: str) -> list[str]:
        now = self.clock()
        if now < self._next_at:
            return []
        self._next_at = now + self.every
        return self.pauses.expire(now, self.lease_key, token)
