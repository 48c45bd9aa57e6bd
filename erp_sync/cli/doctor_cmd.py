"""``doctor``: the differences between the stored settings and the live schedule, right now.

It runs the leader's own check (``erp_sync.beat.sweep.inspect``) over every company and over
every piece of schedule state whose company is gone, and shows how far the leader's continuous
sweep has got. Exit status 1 while differences exist (the sweep repairs them within one pass;
a company whose settings are unreadable stays until its settings are fixed), 0 when none do.
It also checks the workers' database (answers, schema current): exit 1 when it does not.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from config.members import split_due_member
from erp_sync.beat.sweep import inspect
from erp_sync.cli.context import Ctx, echo_json, pass_ctx, table
from erp_sync.db.engine import head_revision
from erp_sync.errors import DatabaseUnavailable

BATCH = 500


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def doctor(ctx: Ctx, as_json: bool) -> None:
    """Compare every company's schedule with its settings; exit 1 while they differ."""
    client, keys = ctx.client, ctx.keys
    now = ctx.now()
    companies = sorted(str(c) for c in client.smembers(keys.companies))
    known = set(companies)
    scheduled = {str(c) for c in client.hkeys(keys.beat_applied)}
    for entry in client.zrange(keys.due, 0, -1):
        try:
            scheduled.add(split_due_member(str(entry))[0])
        except ValueError:
            scheduled.add(str(entry))  # a malformed member: shown as its own company
    ids = companies + sorted(scheduled - known)
    differences = []
    for start in range(0, len(ids), BATCH):
        for finding in inspect(
            client, keys, ids[start : start + BATCH], now, ctx.env.seconds_per_hour
        ):
            differences += [
                {"company": finding.company, "problem": p, "repairable": finding.plan is not None}
                for p in finding.problems
            ]
    out: dict[str, Any] = {
        "companies": len(companies),
        "checked": len(ids),
        "differences": differences,
        "sweep": _sweep(ctx, now),
        "database": _database(ctx),
    }
    if as_json:
        echo_json(out)
    else:
        _print(out)
    sys.exit(1 if differences or not out["database"]["up_to_date"] else 0)


def _database(ctx: Ctx) -> dict[str, Any]:
    """Whether the workers' database answers and is at this code's schema."""
    head = head_revision()
    try:
        current, error = ctx.db.current_revision(), None
    except DatabaseUnavailable as exc:
        current, error = None, str(exc)
    return {
        "url": ctx.db.masked_url,
        "current": current,
        "head": head,
        "up_to_date": current == head,
        "error": error,
    }


def _sweep(ctx: Ctx, now: float) -> dict[str, Any]:
    raw = ctx.client.hgetall(ctx.keys.beat_sweep)
    number = {k: float(v) for k, v in raw.items()}
    last = number.get("last_pass_completed_at")
    return {
        "period_seconds": number.get("period", ctx.env.sweep_seconds),
        "pass_checked": int(number.get("checked", 0)),
        "pass_companies": int(number.get("companies", 0)),
        "pass_repaired": int(number.get("repaired", 0)),
        "last_pass_seconds": number.get("last_pass_seconds"),
        "last_pass_repaired": int(number["last_pass_repaired"])
        if "last_pass_repaired" in number
        else None,
        "last_pass_age_seconds": round(now - last, 1) if last else None,
        "repairs_total": int(ctx.client.hget(ctx.keys.beat_stats, "repairs") or 0),
    }


def _print(out: dict[str, Any]) -> None:
    sweep = out["sweep"]
    if out["differences"]:
        table(
            [
                [
                    d["company"],
                    d["problem"],
                    "sweep rebuilds it" if d["repairable"] else "needs you",
                ]
                for d in out["differences"]
            ],
            ["COMPANY", "DIFFERENCE", "FIX"],
        )
    click.echo(f"checked {out['checked']} companies: {len(out['differences'])} differences")
    db = out["database"]
    if db["error"]:
        click.echo(f"database: {db['error']}")
    elif not db["up_to_date"]:
        click.echo(
            f"database: {db['url']} is at {db['current'] or 'no schema'}, needs "
            f"{db['head']}: run `erp-sync db upgrade` (workers refuse to start)"
        )
    else:
        click.echo(f"database: {db['url']} at {db['head']} (up to date)")
    if sweep["last_pass_age_seconds"] is None:
        click.echo("sweep: no full pass completed yet (is a beat leading?)")
    else:
        click.echo(
            f"sweep: last full pass {sweep['last_pass_age_seconds']}s ago took "
            f"{sweep['last_pass_seconds']}s and repaired {sweep['last_pass_repaired']}; "
            f"current pass {sweep['pass_checked']}/{sweep['pass_companies']}; "
            f"{sweep['repairs_total']} repairs in all"
        )


COMMANDS = [doctor]
