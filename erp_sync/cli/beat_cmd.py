"""``schedule`` and ``status``: what beat will run next, and whether beat is healthy.

Flower shows workers and tasks but has no view of a beat schedule; these fill that gap from the
same Redis state beat itself uses (the due index and the heartbeats), so they cannot disagree.
"""

from __future__ import annotations

from typing import Any

import click

from config.members import due_member
from config.models import TOGGLES, SyncKind
from erp_sync.beat.index import DueIndex
from erp_sync.cli.context import Ctx, echo_json, pass_ctx, table
from erp_sync.control.pause import FLEET, PauseRecord, Pauses
from erp_sync.infra.slots import TASK_NAMES, queue_for, slot_iso
from erp_sync.schedule.applied import Applied
from erp_sync.schedule.cadence import cadences, slot_after
from erp_sync.views.status import LastRun, fleet_status

# The setting that switches each sync on (what `settings show` and `settings set` call it).
SETTING_OF = {kind.value: setting for setting, kind in TOGGLES.items()}


@click.command("schedule")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def schedule(ctx: Ctx, company_id: str, as_json: bool) -> None:
    """Each enabled sync of COMPANY with its next run (per project for project-level syncs)."""
    store = ctx.store
    company = store.get_company(company_id)
    stored = store.sync_settings(company_id)
    index = DueIndex(ctx.client, ctx.keys)
    applied: Applied | None = index.applied([company_id])[company_id]
    listed = store.list_projects(company_id)
    projects = [p.id for p in listed]
    opted_out = [p.id for p in listed if not p.sync_job_costs]
    pipe = ctx.client.pipeline(transaction=False)
    kinds = list(cadences(stored.settings, company.timezone, ctx.env.seconds_per_hour).items())
    for kind, _ in kinds:
        pipe.zscore(ctx.keys.due, due_member(company_id, kind))
    scores = pipe.execute()
    now = ctx.now()
    entries: list[dict[str, Any]] = []
    for (kind, cadence), score in zip(kinds, scores, strict=True):
        live = score is not None and applied is not None and applied.version == stored.version
        nxt = float(score) if live else slot_after(cadence, company_id, kind, now)
        entries.append(
            {
                "kind": kind.value,
                "task": TASK_NAMES[kind],
                "queue": queue_for(kind),
                "cadence": cadence.describe(),
                "next_run": slot_iso(nxt),
                "in_seconds": round(max(0.0, nxt - now), 1),
                "source": "beat" if live else "computed",
                "projects": (
                    [p for p in projects if p not in opted_out]
                    if kind is SyncKind.JOB_COSTS
                    else projects
                )
                if kind.project_level
                else None,
                **({"opted_out": opted_out} if kind is SyncKind.JOB_COSTS else {}),
            }
        )
    pauses = Pauses(store)
    paused = {"company": pauses.get(company_id), "fleet": pauses.get(None)}
    out = {
        "company": company_id,
        "erp": company.erp.value,
        "settings_version": stored.version,
        "applied_version": applied.version if applied else 0,
        "paused": {k: v.model_dump(mode="json") if v else None for k, v in paused.items()},
        "entries": entries,
    }
    if as_json:
        echo_json(out)
        return
    click.echo(
        f"{company_id} ({company.erp.value}): settings version {stored.version}, "
        f"applied by beat: {out['applied_version'] or 'not yet'}"
    )
    for what, record in paused.items():
        if record is not None:
            click.echo(
                f"PAUSED ({'this company' if what == 'company' else 'the whole fleet'}): "
                f"{describe_pause(record)}; nothing is dispatched until resumed"
            )
    table(
        [
            [
                e["kind"],
                SETTING_OF[e["kind"]],
                e["cadence"],
                e["next_run"],
                f"{e['in_seconds']}s",
                e["source"],
                _fan_out(e["projects"], e.get("opted_out")),
            ]
            for e in entries
        ],
        ["SYNC", "SETTING", "CADENCE", "NEXT RUN (UTC)", "IN", "SOURCE", "FAN-OUT"],
    )
    if any(e["source"] == "computed" for e in entries):
        click.echo(
            "note: 'computed' rows are what the settings imply; no beat has applied them "
            "yet (is a beat running?)",
            err=True,
        )


def _fan_out(projects: list[str] | None, opted_out: list[str] | None = None) -> str:
    if projects is None:
        return ""
    shown = f"{len(projects)} project{'' if len(projects) == 1 else 's'}"
    return shown + (f" ({len(opted_out)} opted out: {', '.join(opted_out)})" if opted_out else "")


def describe_pause(record: PauseRecord) -> str:
    """One line: by whom, why, since and until when."""
    until = f"until {record.until:%Y-%m-%dT%H:%M:%SZ}" if record.until else "until resumed"
    why = f", reason: {record.reason}" if record.reason else ""
    return f"by {record.by} since {record.since:%Y-%m-%dT%H:%M:%SZ}, {until}{why}"


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status(ctx: Ctx, as_json: bool) -> None:
    """The leading beat, each beat's last tick age, due backlog, queues, last run per sync."""
    out = fleet_status(ctx.client, ctx.keys)
    if as_json:
        echo_json(out.model_dump(mode="json"))
        return
    click.echo(f"leader: {out.leader or 'NONE (no beat is leading: nothing is dispatched)'}")
    table(
        [[b.node, b.role, str(b.pid), f"{b.last_tick_age_s}s"] for b in out.beats],
        ["BEAT", "ROLE", "PID", "LAST TICK"],
    )
    click.echo(
        f"entries: {out.entries}  due now (backlog): {out.due_backlog}  "
        f"dispatched: {out.dispatched_slots} slots / {out.dispatched_tasks} tasks  "
        f"repairs: {out.repairs}"
    )
    click.echo("queues: " + ", ".join(f"{q}={n}" for q, n in out.queues.items()))
    for what, record in sorted(out.paused.items()):
        click.echo(
            f"PAUSED {'the whole fleet' if what == FLEET else what}: {describe_pause(record)}"
        )
    rows = []
    for kind, last in out.last_runs.items():
        ok, bad = last["succeeded"], last["failed"]
        rows.append([kind, _when(ok), _when(bad), bad.error or "" if bad else ""])
    table(rows, ["SYNC", "LAST SUCCESS", "LAST FAILURE", "LAST ERROR"])


def _when(run: LastRun | None) -> str:
    if not run:
        return "-"
    where = run.company + (f"/{run.project}" if run.project else "")
    return f"{run.finished_at:%Y-%m-%dT%H:%M:%S} ({where})" if run.finished_at else where


COMMANDS = [schedule, status]
