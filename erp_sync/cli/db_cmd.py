"""``db upgrade``, ``db current`` and ``db import-redis``: the database the syncs write into.

``db upgrade`` is the one way to create or migrate the schema (Alembic, no alembic.ini): run it
once before workers start (compose does, in its ``migrate`` service). ``db import-redis`` moves
what earlier versions kept in Redis (the Procore-side hashes and the run records) into the
database; it is idempotent (a record already there is left alone), so it can be rerun at will.
"""

from __future__ import annotations

import json

import click

from config.keys import KeySpace
from config.models import RunRecord
from erp_sync.cli.context import Ctx, echo_json, pass_ctx
from erp_sync.db import RecordStore, RunLog
from erp_sync.db.engine import head_revision
from erp_sync.db.schema import COLLECTIONS


@click.group("db")
def db() -> None:
    """The database: schema migrations and the one-time import from Redis."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Ctx) -> None:
    """Create or migrate the schema to this version's (safe to run again)."""
    before, after = ctx.db.upgrade()
    where = ctx.db.masked_url
    if before == after:
        click.echo(f"{where}: already at {after}")
    else:
        click.echo(f"{where}: upgraded from {before or 'an empty database'} to {after}")


@db.command("current")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def db_current(ctx: Ctx, as_json: bool) -> None:
    """The schema's revision and whether it is the one this version needs."""
    current, head = ctx.db.current_revision(), head_revision()
    if as_json:
        echo_json(
            {
                "url": ctx.db.masked_url,
                "current": current,
                "head": head,
                "up_to_date": current == head,
            }
        )
        return
    state = "up to date" if current == head else "behind: run `erp-sync db upgrade`"
    click.echo(f"{ctx.db.masked_url}: at {current or 'no schema'}, needs {head} ({state})")


def _legacy_collection(keys: KeySpace, key: str) -> tuple[str, str, str | None] | None:
    """(company, collection, project) of an old Procore-side hash key, or None."""
    parts = keys.segments("procore", key) or []
    if len(parts) == 2 and parts[1] in COLLECTIONS and not COLLECTIONS[parts[1]].project_level:
        return parts[0], parts[1], None
    if len(parts) == 3 and parts[1] in COLLECTIONS and COLLECTIONS[parts[1]].project_level:
        return parts[0], parts[1], parts[2]
    return None


@db.command("import-redis")
@click.option(
    "--delete",
    is_flag=True,
    help="Delete each old Procore-side hash once its records are in the database.",
)
@pass_ctx
def db_import_redis(ctx: Ctx, delete: bool) -> None:
    """Import the Procore-side records and run history older versions kept in Redis."""
    client, keys = ctx.client, ctx.keys
    ctx.db.check()
    records = skipped = 0
    for key in sorted(str(k) for k in client.scan_iter(keys.pattern("procore"), count=500)):
        where = _legacy_collection(keys, key)
        if where is None:
            skipped += 1
            continue
        company, name, project = where
        page = [json.loads(v) for v in client.hvals(key)]
        added = RecordStore(ctx.db, company).import_page(name, project, page)
        records += len(page)
        click.echo(
            f"{company} {name}{f' {project}' if project else ''}: {len(page)} records ({added} new)"
        )
        if delete:
            client.delete(key)
    runs = added = 0
    log = RunLog(ctx.db)
    for key in sorted(str(k) for k in client.scan_iter(keys.pattern("runs"), count=500)):
        if keys.company_of("runs", key) is None:
            continue  # the fleet's latest runs (runs:last), not a company's records
        batch = [RunRecord.model_validate_json(v) for v in client.hvals(key)]
        runs += len(batch)
        added += log.import_many(batch)
    click.echo(
        f"imported: {records} Procore-side records, {runs} runs ({added} new); "
        f"{skipped} unrecognised keys left alone"
    )


COMMANDS = [db]
