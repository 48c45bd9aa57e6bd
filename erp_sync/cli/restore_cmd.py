"""The database's durable copy of the configuration: written after every admin command, and
``restore-from-db``, which rebuilds Redis from it after Redis lost its data.

``copy_changed`` copies every scope marked changed (``erp_sync.control.snapshot``) into the
database by revision, with the newest entries of its audit and security logs (into the audit
archive, where a rerun inserts nothing twice). The CLI runs it when a command that changed
something ends; the periodic ``erp_sync.copy_config`` task (``tasks/config_copy.py``) runs it
for what no command copied: a worker's token rotation, a timed pause that ended, a copy the
database refused. So the copy is behind Redis by at most that task's period while the database
accepts writes (see docs/operator-guide.md, "The configuration's durable copy").
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import datetime

import click
import redis
from sqlalchemy import func, select

from config.keys import KeySpace
from config.models import SyncKind
from config.snapshot import FLEET
from erp_sync.cli.context import Ctx, pass_ctx, table
from erp_sync.control import snapshot
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import changes_through
from erp_sync.db import Database
from erp_sync.db.audit import AuditArchive
from erp_sync.db.config_copy import ConfigCopy
from erp_sync.db.schema import sync_runs
from erp_sync.errors import DatabaseError, ErpSyncError, InvalidInput

LOG_ENTRIES = 50  # newest entries of each log copied with a scope (the archive skips repeats)
# A slot's time is stored at second precision (``scheduled_for``): the restored "last slot
# dispatched" is the end of that second, so the same slot never goes again and the next (at
# least a second later) still does.
SLOT_PRECISION = 0.999


@dataclass
class Copied:
    """What one ``copy_changed`` pass did."""

    copied: list[str] = field(default_factory=list)
    error: str | None = None


def copy_changed(client: redis.Redis, keys: KeySpace, db: Database, limit: int = 1000) -> Copied:
    """Copy what changed since the last copy (at most ``limit`` scopes); a database error ends
    the pass and is returned, what it did not copy stays marked for the next one. A scope Redis
    cannot read (a key of the wrong type) is skipped, left marked and named in ``error``; so is
    one Redis holds at an older revision than the copy does (a Redis rebuilt after a loss whose
    clock is behind the lost one's, until ``restore-from-db`` raises the revision floor)."""
    done = Copied()
    copy, archive = ConfigCopy(db), AuditArchive(db)
    try:
        for scope in snapshot.changed(client, keys, limit):
            try:
                snap = snapshot.read(client, keys, scope)
            except redis.ResponseError as exc:  # a key of the wrong type: left marked, said
                done.error = f"{scope}: {str(exc).splitlines()[0]}"
                continue
            kept = snap.scope == FLEET or snap.company is not None or snap.removed is not None
            if kept and not copy.save(snap) and _behind(client, keys, copy, scope):
                done.error = (
                    f"{scope}: Redis holds it at an older revision than the database's copy "
                    "(Redis lost its data?): run erp-sync restore-from-db"
                )
                continue  # left marked: the copy takes it once the restore raised the floor
            if snap.scope != FLEET:
                archive.insert("audit", _newest(client, keys.audit(scope)))
                archive.insert("denied", _newest(client, keys.denied(scope)))
            snapshot.clean(client, keys, scope, snap.rev)
            done.copied.append(scope)
        if done.copied:
            archive.insert("operator", _newest(client, keys.operator_log))
    except DatabaseError as exc:
        done.error = str(exc)
    return done


def _behind(client: redis.Redis, keys: KeySpace, copy: ConfigCopy, scope: str) -> bool:
    """Redis holds ``scope`` at an older revision than the copy (not a copier that lost a race
    to a newer snapshot: Redis's revision is read now): rebuilt after a loss, on a clock behind
    the lost server's."""
    return copy.rev(scope) > snapshot.revision(client.hget(keys.config_revs, scope))


def _newest(client: redis.Redis, key: str) -> list[str]:
    return [str(raw) for raw in client.lrange(key, 0, LOG_ENTRIES - 1)]


def copy_after_command(ctx: Ctx, before: int) -> None:
    """When a command succeeded and changed the configuration: copy what waits to be copied now;
    a database that refuses is one warning line. After a command that failed nothing is done
    (bad input writes nothing, and the error was its one line); the periodic copy takes what a
    failed command still changed (a change no replica acknowledged). ``before``: the client's
    change count when the command started (``changes_through``)."""
    client = getattr(ctx, "_client", None)
    if client is None or sys.exc_info()[1] is not None:  # the command's error is unwinding
        return
    if changes_through(client) == before:  # a command that changed nothing writes nothing
        return
    try:
        done = copy_changed(client, ctx.keys, ctx.db)
    except (ErpSyncError, redis.RedisError) as exc:  # a bad database URL, Redis gone since
        done = Copied(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if done.error is not None:
        click.echo(
            f"warning: the change is in Redis but its copy in the database failed ({done.error}); "
            "the periodic copy retries it",
            err=True,
        )


def last_slots(db: Database, company: str) -> dict[SyncKind, float]:
    """Per sync, the newest scheduled slot of ``company`` the run history holds (epoch seconds,
    the end of its second)."""
    t = sync_runs
    query = (
        select(t.c.kind, func.max(t.c.scheduled_for))
        .where(t.c.company == company, t.c.trigger == "schedule")
        .group_by(t.c.kind)
    )

    def read() -> dict[SyncKind, float]:
        with db.engine.connect() as conn:
            rows = conn.execute(query).all()
        found = {}
        for kind, slot in rows:
            if kind in set(SyncKind) and slot:
                when = datetime.fromisoformat(str(slot).replace("Z", "+00:00"))
                found[SyncKind(kind)] = when.timestamp() + SLOT_PRECISION
        return found

    return db.guard(read)


@click.command("restore-from-db")
@click.option("--yes", is_flag=True, help="Restore without asking.")
@click.option(
    "--force",
    is_flag=True,
    help="Also replace a company Redis holds at an older revision than the copy's (Redis put "
    "back from an older backup); by default it is kept.",
)
@pass_ctx
def restore_from_db(ctx: Ctx, yes: bool, force: bool) -> None:
    """Rebuild what Redis lost from the database's copy of every company's configuration.

    Restores companies, projects, users, settings (with their version), connections (sealed,
    as stored), alert rules and pauses. A company Redis holds is kept (at an older revision
    than the copy's it was made again after the loss: copied again from Redis; --force
    replaces it); one Redis holds at the copy's revision gets back the keys it lost. Beat plans
    each restored company at once; no slot the history shows ran is sent again."""
    copies = ConfigCopy(ctx.db).all()
    if not copies:
        raise InvalidInput("the database holds no copy of the configuration: nothing to restore")
    client, keys = ctx.client, ctx.keys
    plans = [snapshot.plan(client, keys, s, force) for s in copies]
    table([[p.scope, p.action, p.why] for p in plans], ["SCOPE", "ACTION", "WHAT"])
    todo = [s for s, p in zip(copies, plans, strict=True) if p.action == "restored"]
    again = [p.scope for p in plans if p.recopy]
    if not todo and not again:
        click.echo("nothing to restore: Redis holds everything the copy does")
        return
    if not yes:
        also = f" and copy {len(again)} again from Redis" if again else ""
        click.confirm(f"restore {len(todo)} of {len(copies)} into Redis{also}?", abort=True)
    store: SettingsStore = ctx.store
    started = time.monotonic()
    snapshot.raise_floors(store, copies)
    done = []
    for snap in todo:
        slots = last_slots(ctx.db, snap.scope) if snap.company is not None else {}
        outcome = snapshot.restore(store, snap, slots, force)
        if outcome.action == "restored":
            done.append(snap.scope)
    for scope in again:
        snapshot.recopy(store, scope)
    click.echo(
        f"restored {len(done)} of {len(todo)} in {time.monotonic() - started:.2f}s"
        + (f" ({len(again)} kept as Redis holds them, copied again)" if again else "")
        + "; beat plans each restored company from its change message"
    )


COMMANDS = [restore_from_db]
