"""The unit of work every admin action is: one optimistic Redis transaction.

An action reads what it depends on under WATCH (the company, its users hash, whatever it
changes), checks permission and input against what it read, then ``begin()``s and queues its
writes together with their audit entries and change messages, which commit with them or not at
all. If another writer touched a watched key meanwhile, Redis refuses the commit and the action
runs again from its reads, so two admins racing never lose an update and a demotion racing a
write wins. A new admin action copies this pattern::

    def write(work: UnitOfWork) -> Thing:
        current = work.pipe.get(key)              # reads, under WATCH
        require_admin(work.pipe, keys, company, actor)
        work.begin()                               # from here on, queued writes
        work.pipe.set(key, new)
        work.audit(AuditEntry(...))
        work.change(company, version)              # beat re-plans the company
        return thing

    thing = store.transact([key, keys.users(company)], write, Denied(company, actor, "thing.set"))

``write`` may run several times; what it returns on the attempt that commits is the result. An
action on a company names it (``Denied``, or ``company=``): the store then also watches the
company record and refuses the action if a removal won the race.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import redis
from redis.connection import Connection

from config.keys import KeySpace
from config.models import AuditEntry
from erp_sync.control.access import require_admin
from erp_sync.errors import ConcurrentUpdate

# The hard cap of each audit list (a company's audit and refused changes, the operator log). The
# audit list is written in the same transaction as the settings, so the recent log lives in
# Redis; the hourly `erp_sync.archive_audit` task moves all but the newest ERP_SYNC_AUDIT_KEEP
# (200) to the database (erp_sync/db/audit.py). The cap is the backstop while that task does not
# run: entries beyond it are dropped. ERP_SYNC_AUDIT_KEEP is validated against this value.
AUDIT_CAP = 2_000
CHANGE_STREAM_CAP = 100_000  # the default of ERP_SYNC_CHANGE_STREAM_MAXLEN
MAX_ATTEMPTS = 200
# Per client, how many changes to the configuration committed through it in this process: the
# CLI copies the configuration to the database after a command only if the count moved.
_CHANGES: weakref.WeakKeyDictionary[redis.Redis, int] = weakref.WeakKeyDictionary()

T = TypeVar("T")


@dataclass(frozen=True)
class Denied:
    """What to write in the security log (``audit --denied``) if an action is refused: the
    action (``company.remove``: logged as ``company.remove.denied``) and what was requested."""

    company: str
    actor: str
    action: str
    requested: dict[str, object] = field(default_factory=dict)


class UnitOfWork:
    """One attempt of an admin action's transaction: its pipeline, and the log writes it queues."""

    def __init__(
        self,
        pipe: redis.client.Pipeline,
        keys: KeySpace,
        clock: Callable[[], datetime],
        os_user: str | None,
        stream_maxlen: int,
    ) -> None:
        self.pipe, self.keys, self.clock = pipe, keys, clock
        self._os_user, self._maxlen = os_user, stream_maxlen
        # The scopes (company ids, ``*``) whose configuration this action changed: the store
        # bumps their revision and marks them for the database's copy in the same MULTI.
        self.touched: set[str] = set()

    def touch(self, scope: str) -> None:
        """Mark ``scope`` changed without an audit entry or change message (an audited or
        re-planned company, and the company the store's transaction names, are marked anyway),
        e.g. a worker's token rotation."""
        self.touched.add(scope)

    def require_admin(self, company: str, actor: str) -> None:
        """Before ``begin()``: ``actor`` is an admin of ``company`` now (its users hash is read
        under WATCH, so a demotion racing this action wins)."""
        require_admin(self.pipe, self.keys, company, actor)

    def begin(self) -> None:
        """End the reads: every command after this is queued and commits together (MULTI)."""
        if not self.pipe.explicit_transaction:
            self.pipe.multi()

    def _stamped(self, entry: AuditEntry) -> str:
        if entry.os_user is None and self._os_user is not None:
            entry = entry.model_copy(update={"os_user": self._os_user})
        return entry.model_dump_json()

    def _push(self, key: str, entry: AuditEntry) -> None:
        self.begin()
        self.pipe.lpush(key, self._stamped(entry))
        self.pipe.ltrim(key, 0, AUDIT_CAP - 1)

    def audit(self, entry: AuditEntry) -> None:
        """The company's audit log: who changed what, when, old and new values."""
        self.touched.add(entry.company)
        self._push(self.keys.audit(entry.company), entry)

    def entry(
        self,
        company: str,
        actor: str,
        action: str,
        old: dict[str, Any] | None = None,
        new: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """An audit entry of this action, stamped with the store's clock."""
        return AuditEntry(
            at=self.clock(),
            actor=actor,
            action=action,
            company=company,
            old=old or {},
            new=new or {},
        )

    def audited(
        self,
        company: str,
        actor: str,
        action: str,
        old: dict[str, Any] | None = None,
        new: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """``entry`` written to the company's audit log; returned for the operator log."""
        entry = self.entry(company, actor, action, old, new)
        self.audit(entry)
        return entry

    def operator(self, entry: AuditEntry) -> None:
        """The operator log: actions no company admin made (company add, fleet pause)."""
        self.touched.add(entry.company)
        self._push(self.keys.operator_log, entry)

    def denied(self, entry: AuditEntry) -> None:
        """The company's security log: a refused change, with what was requested."""
        self._push(self.keys.denied(entry.company), entry)

    def change(self, company: str, version: int) -> None:
        """A message on the change stream: beat re-plans ``company`` (``version`` 0: dropped)."""
        self.begin()
        self.touched.add(company)
        self.pipe.xadd(
            self.keys.changes,
            {"company": company, "version": str(version)},
            # Approximate trimming (whole stream nodes) is cheaper; a small cap is exact.
            maxlen=self._maxlen,
            approximate=self._maxlen >= 1000,
        )


class _HoldingPipeline(redis.client.Pipeline):
    """A transaction pipeline that keeps the connection its EXEC ran on, instead of handing it
    back to the pool, while ``holding``: a ``WAIT`` after the commit must run on that connection
    (WAIT counts acknowledgements of its own connection's last write). EXEC has dropped every
    WATCH, so the UNWATCH a plain reset sends is not needed either."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, True, None)
        self.holding = False
        self.held: Connection | None = None

    def reset(self) -> None:  # type: ignore[override]  # Pipeline's, not the RESET command
        if self.holding and self.connection is not None:
            self.held, self.connection = self.connection, None
        super().reset()

    def release_held(self, broken: bool) -> None:
        """Back to the pool (disconnected first if a reply may still be unread on it)."""
        if self.held is not None:
            if broken:
                self.held.disconnect()  # type: ignore[no-untyped-call]
            self.connection_pool.release(self.held)
            self.held = None


def note_change(client: redis.Redis) -> None:
    """A change to the configuration is committing through ``client``."""
    _CHANGES[client] = _CHANGES.get(client, 0) + 1


def changes_through(client: redis.Redis | None) -> int:
    """How many changes to the configuration committed through ``client`` in this process."""
    return 0 if client is None else _CHANGES.get(client, 0)


def transact(
    client: redis.Redis,
    watch: list[str],
    write: Callable[[redis.client.Pipeline], T],
    confirm: Callable[[Connection, T], None] | None = None,
) -> T:
    """Run ``write`` under WATCH of ``watch`` (none: a plain MULTI) until it commits without a
    conflicting writer; its last return value is the result. After a commit, ``confirm`` gets
    the connection EXEC ran on and the result (the replica acknowledgement) before that
    connection goes back to the pool; an attempt that wrote nothing is not confirmed."""
    pipe = _HoldingPipeline(client)
    with pipe:
        for attempt in range(MAX_ATTEMPTS):
            try:
                if watch:
                    pipe.watch(*watch)  # type: ignore[no-untyped-call]
                result = write(pipe)
                if not pipe.explicit_transaction:
                    return result
                pipe.holding = True
                try:
                    pipe.execute()
                finally:
                    pipe.holding = False
                if confirm is not None and pipe.held is not None:
                    try:
                        confirm(pipe.held, result)
                    except (redis.RedisError, OSError):  # a reply may be left on the socket
                        pipe.release_held(broken=True)
                        raise
                return result
            except redis.WatchError:
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            finally:
                pipe.release_held(broken=False)
                pipe.reset()
    raise ConcurrentUpdate(f"gave up after {MAX_ATTEMPTS} conflicting writes on {watch[0]}")
