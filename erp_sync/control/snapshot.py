"""The Redis side of the configuration's durable copy: read a scope's snapshot, list and clear
what changed, and write a snapshot back after Redis lost it.

Every admin change bumps its scopes' revision and marks them changed (``config_dirty``) in its
own transaction (``SettingsStore.transact``). The copier (``erp_sync.cli.restore_cmd``: right
after each CLI command, and periodically) reads each marked scope with ``read`` (one MULTI: a
consistent snapshot with its revision), stores it in the database by revision, then ``clean``
removes the mark only if the revision is still the one copied, so a change landing in between
stays marked.

``restore`` writes one snapshot back as one admin transaction (audited in the operator log,
replica-acknowledged), refusing to replace a company Redis holds at the same or a newer
revision. It puts a change message on the stream so beat plans the company at once, and raises
beat's last dispatched slot of each sync to the newest slot the database's history recorded, so
no slot that ran before the loss is dispatched again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis

from config.keys import KeySpace
from config.members import due_member
from config.models import StoredSettings, SyncKind, parse
from config.snapshot import FLEET, Snapshot
from config.validation import casefold_key
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import UnitOfWork
from erp_sync.errors import CorruptRecord


def revision(raw: object) -> int:
    try:
        return int(str(raw)) if raw is not None else 0
    except ValueError:
        return 0


def read(client: redis.Redis, keys: KeySpace, scope: str) -> Snapshot:
    """``scope``'s configuration now, with its revision, in one atomic read."""
    pipe = client.pipeline(transaction=True)
    pipe.hget(keys.config_revs, scope)
    pipe.hget(keys.paused, scope)
    pipe.zscore(keys.paused_until, scope)
    if scope == FLEET:
        rev, pause, until = pipe.execute()
        return Snapshot(scope=scope, rev=revision(rev), pause=pause, pause_until=until)
    pipe.get(keys.company(scope))
    pipe.get(keys.settings(scope))
    pipe.hgetall(keys.projects(scope))
    pipe.hgetall(keys.users(scope))
    pipe.smembers(keys.job_cost_optouts(scope))
    pipe.hgetall(keys.connection(scope))
    pipe.hgetall(keys.alerts(scope))
    pipe.hget(keys.removed, scope)
    rev, pause, until, company, settings, projects, users, optouts, conn, alerts, removed = (
        pipe.execute()
    )
    return Snapshot(
        scope=scope,
        rev=revision(rev),
        company=company,
        settings=settings,
        projects=projects,
        users=users,
        optouts=sorted(optouts),
        connection=conn,
        alerts=alerts,
        pause=pause,
        pause_until=until,
        removed=None if company is not None else removed,
    )


def changed(client: redis.Redis, keys: KeySpace, limit: int = 1000) -> dict[str, int]:
    """Scopes changed and not yet copied, with the revision each was marked at (at most
    ``limit`` per call)."""
    found: dict[str, int] = {}
    for scope, rev in client.hscan_iter(keys.config_dirty, count=min(limit, 1000)):
        found[str(scope)] = revision(rev)
        if len(found) >= limit:
            break
    return found


def clean(client: redis.Redis, keys: KeySpace, scope: str, rev: int) -> bool:
    """Drop ``scope``'s mark if it is still ``rev`` (the revision just copied)."""
    with client.pipeline() as pipe:
        try:
            pipe.watch(keys.config_dirty)  # type: ignore[no-untyped-call]
            if revision(pipe.hget(keys.config_dirty, scope)) > rev:
                return False  # changed again since: the next copy takes it
            pipe.multi()
            pipe.hdel(keys.config_dirty, scope)
            pipe.execute()
            return True
        except redis.WatchError:
            return False


@dataclass(frozen=True)
class Restored:
    """What ``restore`` did with one snapshot: ``action`` restored|kept|skipped, and why."""

    scope: str
    action: str
    why: str


def plan(client: redis.Redis, keys: KeySpace, snap: Snapshot) -> Restored:
    """What ``restore`` would do with ``snap`` against Redis now (read only)."""
    if snap.scope == FLEET:
        if client.hexists(keys.paused, FLEET) or snap.pause is None:
            return Restored(FLEET, "skipped", "no fleet pause to restore (or one is set)")
        return Restored(FLEET, "restored", "the fleet-wide pause")
    here = revision(client.hget(keys.config_revs, snap.scope))
    exists = bool(client.exists(keys.company(snap.scope)))
    if snap.gone:
        if exists or client.hexists(keys.removed, snap.scope) or snap.removed is None:
            return Restored(snap.scope, "skipped", "removal already known (or company present)")
        return Restored(snap.scope, "restored", "its removal record")
    if exists and here == 0:  # written by a version before revisions: nothing says it is older
        return Restored(snap.scope, "kept", "Redis holds it without a revision")
    if exists and here >= snap.rev:
        return Restored(
            snap.scope, "kept", f"Redis holds revision {here}, not older than the copy's {snap.rev}"
        )
    what = f"revision {snap.rev}: {len(snap.projects)} projects, {len(snap.users)} users, "
    what += f"{len(snap.alerts)} alert rules, connection {'yes' if snap.connection else 'no'}, "
    what += f"paused {'yes' if snap.pause else 'no'}"
    return Restored(snap.scope, "restored", ("replacing an older copy, " if exists else "") + what)


def restore(store: SettingsStore, snap: Snapshot, last_slots: Mapping[SyncKind, float]) -> Restored:
    """Write ``snap`` back (see ``plan``); ``last_slots``: per sync, the newest slot time the
    database's history holds for the company."""
    keys = store.keys
    watch = [keys.config_revs, keys.paused, keys.removed]
    if snap.scope != FLEET:
        watch.append(keys.company(snap.scope))

    def write(work: UnitOfWork) -> Restored:
        outcome = plan(work.pipe, keys, snap)  # reads under WATCH
        if outcome.action != "restored":
            return outcome
        kinds = list(last_slots)
        members = [due_member(snap.scope, k) for k in kinds]
        dispatched = work.pipe.hmget(keys.beat_slots, members) if members else []
        generation = revision(work.pipe.get(keys.connection_generations))
        work.begin()
        _write(work, snap)
        for kind, before in zip(kinds, dispatched, strict=True):
            if last_slots[kind] > float(before or 0):  # slots only ever increase
                work.pipe.hset(
                    keys.beat_slots, due_member(snap.scope, kind), repr(last_slots[kind])
                )
        restored_generation = revision(snap.connection.get("generation"))
        if restored_generation > generation:  # the fleet's counter never gives one out again
            work.pipe.set(keys.connection_generations, restored_generation)
        entry = work.entry(
            snap.scope, "operator", "config.restore", {}, {"rev": snap.rev, "what": outcome.why}
        )
        work.operator(entry)
        if snap.company is not None:
            work.change(snap.scope, _settings_version(snap.settings))
        return outcome

    return store.transact(watch, write)


def _write(work: UnitOfWork, snap: Snapshot) -> None:
    pipe, keys, scope = work.pipe, work.keys, snap.scope
    if snap.pause is not None:
        pipe.hset(keys.paused, scope, snap.pause)
        if snap.pause_until is not None:
            pipe.zadd(keys.paused_until, {scope: snap.pause_until})
    elif snap.company is not None:  # replacing an older copy: its pause goes too
        pipe.hdel(keys.paused, scope)
        pipe.zrem(keys.paused_until, scope)
    if scope == FLEET:
        return
    if snap.company is None:
        if snap.removed is not None:
            pipe.hset(keys.removed, scope, snap.removed)
        return
    pipe.set(keys.company(scope), snap.company)
    pipe.sadd(keys.companies, scope)
    pipe.hset(keys.company_folds, casefold_key(scope), scope)
    pipe.hdel(keys.removed, scope)
    if snap.settings is not None:
        pipe.set(keys.settings(scope), snap.settings)
    for key, values in (
        (keys.projects(scope), snap.projects),
        (keys.users(scope), snap.users),
        (keys.connection(scope), snap.connection),
        (keys.alerts(scope), snap.alerts),
    ):
        pipe.delete(key)
        if values:
            pipe.hset(key, mapping={str(k): str(v) for k, v in values.items()})
    pipe.delete(keys.job_cost_optouts(scope))
    if snap.optouts:
        pipe.sadd(keys.job_cost_optouts(scope), *snap.optouts)


def _settings_version(raw: str | None) -> int:
    try:
        return parse(StoredSettings, str(raw), "settings").version if raw else 1
    except CorruptRecord:  # beat re-reads the settings anyway
        return 1
