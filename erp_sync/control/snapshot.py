"""The Redis side of the configuration's durable copy: read a scope's snapshot, list and clear
what changed, and write a snapshot back after Redis lost it.

Every admin change bumps its scopes' revision and marks them changed (``config_dirty``) in its
own transaction (``SettingsStore.transact``). The copier (``erp_sync.cli.restore_cmd``: right
after each CLI command, and periodically) reads each marked scope with ``read`` (one MULTI: a
consistent snapshot with its revision), stores it in the database by revision, then ``clean``
removes the mark only if the revision is still the one copied, so a change landing in between
stays marked.

``restore`` writes one snapshot back as one admin transaction (audited in the operator log,
replica-acknowledged). A company Redis holds is not replaced (``plan`` says why, and what a
company partly lost gets back). It puts a change message on the stream so beat plans the company
at once, and raises beat's last dispatched slot of each sync to the newest slot the database's
history recorded, so no slot that ran before the loss is dispatched again. Before anything is
written back, ``raise_floors`` puts every later revision above the copy's (a rebuilt Redis's
clock may be behind the lost one's) and the connection generation counter above anything the
lost Redis can have issued, so no generation is given out twice.
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
    """What ``restore`` did with one snapshot: ``action`` restored|kept|skipped, and why;
    ``parts``: the keys a partial restore writes (empty: all of them); ``recopy``: kept as
    Redis holds it, and to be copied again over the older... newer-numbered copy."""

    scope: str
    action: str
    why: str
    parts: tuple[str, ...] = ()
    recopy: bool = False


# The parts of a company's configuration, each one key (or field) in Redis.
PARTS = ("index", "settings", "projects", "users", "connection", "alerts", "optouts", "pause")


def _missing(client: redis.Redis, keys: KeySpace, snap: Snapshot) -> tuple[str, ...]:
    """The parts the copy holds and Redis does not (a company partly lost)."""
    scope = snap.scope
    held = {
        "index": (True, client.sismember(keys.companies, scope)),
        "settings": (snap.settings is not None, client.exists(keys.settings(scope))),
        "projects": (bool(snap.projects), client.exists(keys.projects(scope))),
        "users": (bool(snap.users), client.exists(keys.users(scope))),
        "connection": (bool(snap.connection), client.exists(keys.connection(scope))),
        "alerts": (bool(snap.alerts), client.exists(keys.alerts(scope))),
        "optouts": (bool(snap.optouts), client.exists(keys.job_cost_optouts(scope))),
        "pause": (snap.pause is not None, client.hexists(keys.paused, scope)),
    }
    return tuple(part for part in PARTS if held[part][0] and not held[part][1])


def plan(client: redis.Redis, keys: KeySpace, snap: Snapshot, force: bool = False) -> Restored:
    """What ``restore`` would do with ``snap`` against Redis now (read only).

    A company Redis holds is never replaced by default: at a newer revision it changed after the
    copy; at an older one it was made again (or changed) on a Redis rebuilt after the loss,
    whose clock may be behind the lost one's (only ``force`` replaces it, for a Redis put back
    from an older backup); at the same revision Redis should hold what the copy does, so only
    the parts it lacks are written back."""
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
    if not exists and here > snap.rev:  # removed in Redis after the copy was taken
        return Restored(snap.scope, "kept", f"removed in Redis at revision {here}, after the copy")
    if exists and here == 0:  # written by a version before revisions: nothing says it is older
        return Restored(snap.scope, "kept", "Redis holds it without a revision")
    if exists and here > snap.rev:
        return Restored(
            snap.scope, "kept", f"Redis holds revision {here}, newer than the copy's {snap.rev}"
        )
    if exists and here == snap.rev:
        lost = _missing(client, keys, snap)
        if not lost:
            return Restored(snap.scope, "kept", f"Redis holds the copy's revision {snap.rev}")
        return Restored(snap.scope, "restored", f"its lost keys: {', '.join(lost)}", lost)
    if exists and not force:
        return Restored(
            snap.scope,
            "kept",
            f"Redis holds revision {here}, older than the copy's {snap.rev} (made again or "
            "changed since the loss): kept and copied again; --force replaces it with the copy",
            recopy=True,
        )
    what = f"revision {snap.rev}: {len(snap.projects)} projects, {len(snap.users)} users, "
    what += f"{len(snap.alerts)} alert rules, connection {'yes' if snap.connection else 'no'}, "
    what += f"paused {'yes' if snap.pause else 'no'}"
    return Restored(snap.scope, "restored", ("replacing an older copy, " if exists else "") + what)


# Added to the copy's highest connection generation when the counter is raised. The copy is
# behind Redis (by the periodic copy's period, 60 s, while the database accepts writes; longer
# while it refuses), and generations issued meanwhile are not in it. Each takes an INCR of the
# one counter inside a transaction of several round trips, so no Redis issues 10**6 a second:
# this margin stays above everything issued while the copy was up to 10**6 s (11 days) behind.
GENERATION_MARGIN = 10**12


def raise_floors(store: SettingsStore, copies: list[Snapshot]) -> None:
    """Before writing anything back: every revision from now on goes above the copy's highest
    (``KeySpace.config_floor``), and every connection generation above anything issued before
    the loss (the counter raised past the copy's highest by ``GENERATION_MARGIN``)."""
    keys = store.keys
    floor = max((s.rev for s in copies), default=0)
    generation = max((revision(s.connection.get("generation")) for s in copies), default=0)

    def write(work: UnitOfWork) -> None:
        _raise(work, floor, generation + GENERATION_MARGIN)

    store.transact([keys.config_floor, keys.connection_generations], write)


def _raise(work: UnitOfWork, floor: int, generation: int) -> None:
    """Queue the floor and the generation counter raised to at least these (read under WATCH
    of both, so they only ever increase)."""
    keys = work.keys
    here_floor = revision(work.pipe.get(keys.config_floor))
    here_generation = revision(work.pipe.get(keys.connection_generations))
    work.begin()
    if floor > here_floor:
        work.pipe.set(keys.config_floor, floor)
    if generation > here_generation:
        work.pipe.set(keys.connection_generations, generation)


def recopy(store: SettingsStore, scope: str) -> None:
    """Bump ``scope``'s revision (above the floor) and mark it, so the copy takes what Redis
    holds instead of keeping an older state under a higher revision."""

    def write(work: UnitOfWork) -> None:
        work.begin()
        work.touch(scope)

    store.transact([], write, company=scope)


def restore(
    store: SettingsStore,
    snap: Snapshot,
    last_slots: Mapping[SyncKind, float],
    force: bool = False,
) -> Restored:
    """Write ``snap`` back (see ``plan``); ``last_slots``: per sync, the newest slot time the
    database's history holds for the company. The floor and the generation counter are raised
    for this snapshot too (``raise_floors`` does it for the whole copy)."""
    keys = store.keys
    watch = [keys.config_revs, keys.paused, keys.removed, keys.config_floor]
    watch.append(keys.connection_generations)
    if snap.scope != FLEET:
        watch.append(keys.company(snap.scope))

    def write(work: UnitOfWork) -> Restored:
        outcome = plan(work.pipe, keys, snap, force)  # reads under WATCH
        if outcome.action != "restored":
            return outcome
        kinds = list(last_slots)
        members = [due_member(snap.scope, k) for k in kinds]
        dispatched = work.pipe.hmget(keys.beat_slots, members) if members else []
        _raise(work, snap.rev, revision(snap.connection.get("generation")) + GENERATION_MARGIN)
        _write(work, snap, outcome.parts or PARTS)
        for kind, before in zip(kinds, dispatched, strict=True):
            if last_slots[kind] > float(before or 0):  # slots only ever increase
                work.pipe.hset(
                    keys.beat_slots, due_member(snap.scope, kind), repr(last_slots[kind])
                )
        entry = work.entry(
            snap.scope, "operator", "config.restore", {}, {"rev": snap.rev, "what": outcome.why}
        )
        work.operator(entry)
        if snap.company is not None:
            work.change(snap.scope, _settings_version(snap.settings))
        return outcome

    return store.transact(watch, write)


def _write(work: UnitOfWork, snap: Snapshot, parts: tuple[str, ...]) -> None:
    pipe, keys, scope = work.pipe, work.keys, snap.scope
    whole = parts == PARTS
    if "pause" in parts:
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
    if whole:
        pipe.set(keys.company(scope), snap.company)
        pipe.hdel(keys.removed, scope)
    if "index" in parts:
        pipe.sadd(keys.companies, scope)
        pipe.hset(keys.company_folds, casefold_key(scope), scope)
    if "settings" in parts and snap.settings is not None:
        pipe.set(keys.settings(scope), snap.settings)
    for part, key, values in (
        ("projects", keys.projects(scope), snap.projects),
        ("users", keys.users(scope), snap.users),
        ("connection", keys.connection(scope), snap.connection),
        ("alerts", keys.alerts(scope), snap.alerts),
    ):
        if part in parts:
            pipe.delete(key)
            if values:
                pipe.hset(key, mapping={str(k): str(v) for k, v in values.items()})
    if "optouts" in parts:
        pipe.delete(keys.job_cost_optouts(scope))
        if snap.optouts:
            pipe.sadd(keys.job_cost_optouts(scope), *snap.optouts)


def _settings_version(raw: str | None) -> int:
    try:
        return parse(StoredSettings, str(raw), "settings").version if raw else 1
    except CorruptRecord:  # beat re-reads the settings anyway
        return 1
