"""``history``, ``sync-now``, ``reconcile``, ``ratelimit`` and ``demo``: operating the workers.

``sync-now`` needs **standard** (or admin) on the company's ERP Integrations tool, not admin:
running a sync changes no setting and no schedule, it only pulls ERP data earlier, which is what
Procore's Standard users (the accounting approvers among them) already do from the ERP tool.
Admin stays required for changing the schedule (``settings set``).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import get_args

import click
from pydantic import ValidationError

from config.models import (
    CAPABILITIES,
    Company,
    Erp,
    PermissionLevel,
    RunStatus,
    SyncKind,
    first_error,
)
from erp_sync.cli.context import Ctx, echo_json, note_if_removed, pass_ctx, table
from erp_sync.cli.oplog import OPERATOR, record_operator
from erp_sync.cli.pause_cmd import guard_manual_run
from erp_sync.cli.sandbox_cmd import sandbox
from erp_sync.connectors import connector_for
from erp_sync.connectors.sandbox_data import SandboxData
from erp_sync.connectors.throttled import throttled
from erp_sync.control.pause import FLEET
from erp_sync.control.unit import Denied, UnitOfWork
from erp_sync.db import RunLog
from erp_sync.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from erp_sync.infra.slots import TASK_NAMES, queue_for, task_kwargs
from erp_sync.runs.syncs import reconcile as reconcile_kind
from erp_sync.throttle.ratelimit import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LIMITS,
    CompanyLimit,
    RateLimit,
    TokenBucket,
    limit_for,
    set_company_limit,
    set_limit,
)

DEMO_ERPS = (
    Erp.QUICKBOOKS_ONLINE,
    Erp.SAGE_300_CRE,
    Erp.VIEWPOINT_VISTA,
    Erp.XERO,
    Erp.CMIC,
    Erp.NETSUITE,
    Erp.VIEWPOINT_SPECTRUM,
    Erp.ACUMATICA,
)
DEMO_VENDORS = (300, 1200, 2500, 600, 150, 4000, 900, 450)


_SINCE = re.compile(r"(\d{1,9})([mhdw])")  # 9 digits: any real span, never an overflow
_UNIT = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` before ``now``, or an ISO date/time (UTC if no zone)."""
    match = _SINCE.fullmatch(text.strip())
    if match:
        try:
            return now - timedelta(seconds=int(match[1]) * _UNIT[match[2]])
        except OverflowError:
            raise InvalidInput(f"--since {text[:40]!r} reaches before the year 1") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"--since must be like 7d, 12h, 30m or an ISO date, got {text[:40]!r}"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@click.command("history")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--status", type=click.Choice(list(get_args(RunStatus))), help="Only this outcome.")
@click.option("--kind", type=click.Choice([k.value for k in SyncKind]), help="Only this sync.")
@click.option("--project", help="Only this project's runs.")
@click.option("--since", help="Only runs started since: 7d, 12h, 30m, or an ISO date (UTC).")
@pass_ctx
def history(
    ctx: Ctx,
    company_id: str,
    as_json: bool,
    limit: int,
    status: str | None,
    kind: str | None,
    project: str | None,
    since: str | None,
) -> None:
    """COMPANY's sync runs from the database, newest first (kept ERP_SYNC_HISTORY_DAYS); a
    removed company's too."""
    note_if_removed(ctx, company_id)
    start = parse_since(since, datetime.fromtimestamp(ctx.now(), UTC)) if since else None
    runs = RunLog(ctx.db).recent(
        company_id, limit, status=status, kind=kind, project=project, since=start
    )
    if as_json:
        echo_json([r.model_dump(mode="json") for r in runs])
        return
    table(
        [
            [
                f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                r.kind,
                r.project or "-",
                r.status,
                str(r.attempt),
                f"{r.duration_ms:.0f}" if r.duration_ms is not None else "",
                " ".join(f"{k}={v}" for k, v in r.counts.items()),
                r.error or "",
            ]
            for r in runs
        ],
        ["STARTED (UTC)", "KIND", "PROJECT", "STATUS", "ATTEMPT", "MS", "COUNTS", "ERROR"],
    )


def _targets(ctx: Ctx, company: Company, kind: SyncKind, project: str | None) -> list[str | None]:
    """The projects a sync-now covers (``[None]`` for a company-level kind); validates input."""
    if kind not in CAPABILITIES[company.erp]:
        raise InvalidInput(f"{company.erp.value} does not support the {kind.value} sync")
    if not kind.project_level:
        if project is not None:
            raise InvalidInput(f"{kind.value} is a company-level sync; --project does not apply")
        return [None]
    known = ctx.store.list_projects(company.id)
    opted_out = (
        {p.id for p in known if not p.sync_job_costs} if kind is SyncKind.JOB_COSTS else set()
    )
    if project is not None:
        if project not in {p.id for p in known}:
            raise NotFound(f"unknown project {project!r} in {company.id!r}")
        if project in opted_out:
            raise InvalidInput(
                f"project {project!r} is opted out of job-cost syncing "
                f"(project set {company.id} {project} --sync-job-costs)"
            )
        return [project]
    projects = [p.id for p in known if p.id not in opted_out]
    if not projects:
        raise InvalidInput(
            f"{company.id!r} has no projects to run {kind.value} for"
            f"{' (every project is opted out)' if opted_out else ''}"
        )
    return list(projects)


@click.command("sync-now")
@click.argument("company_id", metavar="COMPANY")
@click.argument("kind", type=click.Choice([k.value for k in SyncKind]))
@click.option(
    "--as", "actor", required=True, metavar="USER", help="Acting user (needs standard or admin)."
)
@click.option("--project", help="Project of a project-level sync (default: every project).")
@click.option("--force", is_flag=True, help="Run even though paused (admin; audited).")
@pass_ctx
def sync_now(
    ctx: Ctx, company_id: str, kind: str, actor: str, project: str | None, force: bool
) -> None:
    """Run COMPANY's KIND sync now (queued for the workers; see `history` for the result)."""
    company = ctx.store.get_company(company_id)
    try:
        ctx.store.require(company_id, actor, PermissionLevel.STANDARD)
    except PermissionDenied:
        requested: dict[str, object] = {"kind": kind, "project": project, "force": force}
        ctx.store.record_denied(Denied(company_id, actor, "sync.run", requested))
        raise
    sync_kind = SyncKind(kind)
    targets = _targets(ctx, company, sync_kind, project)
    guard_manual_run(ctx.store, company_id, actor, force)  # a paused company needs --force
    now = ctx.now()
    for target in targets:
        task_id = f"manual:{company_id}:{kind}:{target or '-'}:{uuid.uuid4().hex[:12]}"
        kwargs = task_kwargs(company_id, sync_kind, target, now, "manual")
        ctx.publisher.send(TASK_NAMES[sync_kind], kwargs, task_id, queue_for(sync_kind))
        click.echo(
            f"queued {kind} for {company_id}{f' project {target}' if target else ''}: {task_id}"
        )


@click.command("reconcile")
@click.argument("company_id", metavar="COMPANY")
@click.option("--project", help="Only this project (default: every project).")
@click.option("--fix", is_flag=True, help="Then make the database equal to the ERP.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def reconcile(ctx: Ctx, company_id: str, project: str | None, fix: bool, as_json: bool) -> None:
    """Compare COMPANY's Procore side with its ERP and report drift per collection.

    With --fix, drifted collections are then rewritten from the ERP's full listing (records
    the ERP no longer has are marked deleted); a second run reports no drift.
    """
    company = ctx.store.get_company(company_id)
    projects = [p.id for p in ctx.store.list_projects(company_id)]
    if project is not None and project not in projects:
        raise NotFound(f"unknown project {project!r} in {company_id!r}")
    connector = throttled(
        connector_for(ctx.client, ctx.keys, company),
        TokenBucket(
            ctx.client,
            ctx.keys,
            company_id,
            limit_for(ctx.client, ctx.keys, company.erp, company_id),
        ),
    )
    report: dict[str, dict[str, list[str]]] = {}
    for kind in sorted(CAPABILITIES[company.erp]):
        for target in ([project] if project else projects) if kind.project_level else [None]:
            drift = reconcile_kind(
                ctx.db, company_id, kind, target, connector, fix=fix, skip=report.keys()
            )
            for name, d in drift.items():
                report[name] = {"missing": d.missing, "extra": d.extra, "different": d.different}
    if fix:  # the database was rewritten: an operator change, with what it fixed
        fixed = {n: {k: len(v) for k, v in d.items()} for n, d in report.items() if any(d.values())}
        record_operator(ctx.store, "reconcile.fix", company_id, {"project": project, **fixed})
    if as_json:
        echo_json(report)
        return
    table(
        [
            [name, str(len(d["missing"])), str(len(d["extra"])), str(len(d["different"]))]
            for name, d in report.items()
        ],
        ["COLLECTION", "MISSING", "EXTRA", "DIFFERENT"],
    )
    if fix:
        drifted = sum(1 for d in report.values() if any(d.values()))
        click.echo(f"fixed {drifted} drifted collection(s) from the ERP's full listing")


@click.group("ratelimit")
def ratelimit() -> None:
    """Per-ERP call rate limits shared by every worker (per company)."""


@ratelimit.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def ratelimit_show(ctx: Ctx, as_json: bool) -> None:
    """Each ERP's limit (calls per second, burst, syncs and requests per company at once)."""
    limits = {erp.value: limit_for(ctx.client, ctx.keys, erp).model_dump() for erp in Erp}
    if as_json:
        echo_json(limits)
        return
    table(
        [
            [
                erp,
                f"{v['rate']:g}",
                f"{v['burst']:g}",
                str(v["concurrency"]),
                str(v["requests"] or "-"),
                "" if DEFAULT_LIMITS[Erp(erp)].model_dump() == v else "override",
            ]
            for erp, v in limits.items()
        ],
        ["ERP", "PER SECOND", "BURST", "AT ONCE", "REQUESTS IN FLIGHT", ""],
    )


@ratelimit.command("set")
@click.argument("erp", metavar="ERP")
@click.option("--rate", type=float, required=True, help="Calls per second per company.")
@click.option("--burst", type=float, required=True, help="Calls allowed back to back.")
@click.option(
    "--concurrency",
    type=int,
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Syncs of one company running at once, fleet-wide.",
)
@click.option(
    "--requests",
    type=int,
    help="ERP requests of one company in flight at once, "
    "fleet-wide (default: the ERP's own cap, if it has one).",
)
@pass_ctx
def ratelimit_set(
    ctx: Ctx, erp: str, rate: float, burst: float, concurrency: int, requests: int | None
) -> None:
    """Override ERP's limit for every company on it (live on the next call; operator log)."""
    before = limit_for(ctx.client, ctx.keys, Erp(erp)) if erp in set(Erp) else None

    def write(work: UnitOfWork) -> RateLimit:
        work.begin()
        limit = set_limit(work.pipe, ctx.keys, erp, rate, burst, concurrency, requests)
        old = before.model_dump() if before else {}
        work.operator(
            work.entry(FLEET, OPERATOR, "ratelimit.set", old, {"erp": erp, **limit.model_dump()})
        )
        return limit

    limit = ctx.store.transact([ctx.keys.rate_limit_overrides], write)
    click.echo(
        f"{erp}: {limit.rate:g}/s, burst {limit.burst:g}, "
        f"{limit.concurrency} at once per company"
        f"{f', {limit.requests} requests in flight' if limit.requests else ''}"
    )


@ratelimit.command("company")
@click.argument("company_id", metavar="COMPANY")
@click.option("--rate", type=float, help="Calls per second (default: the ERP's).")
@click.option("--burst", type=float, help="Calls allowed back to back (default: the ERP's).")
@click.option("--concurrency", type=int, help="Syncs running at once (default: the ERP's).")
@click.option(
    "--requests", type=int, help="ERP requests in flight at once (default: the ERP's cap, if any)."
)
@pass_ctx
def ratelimit_company(
    ctx: Ctx,
    company_id: str,
    rate: float | None,
    burst: float | None,
    concurrency: int | None,
    requests: int | None,
) -> None:
    """Show COMPANY's limit, or override parts of it (live on the next call)."""
    company = ctx.store.get_company(company_id)
    if any(v is not None for v in (rate, burst, concurrency, requests)):
        try:
            change = CompanyLimit(
                rate=rate, burst=burst, concurrency=concurrency, requests=requests
            )
        except ValidationError as exc:
            raise InvalidInput(f"invalid limit {first_error(exc)}") from None

        def write(work: UnitOfWork) -> None:
            merged = set_company_limit(work.pipe, ctx.keys, company_id, change, work.begin)
            work.operator(
                work.entry(
                    company_id,
                    OPERATOR,
                    "ratelimit.company",
                    {},
                    merged.model_dump(exclude_none=True),
                )
            )

        ctx.store.transact([ctx.keys.rate_limit_overrides], write)
    limit = limit_for(ctx.client, ctx.keys, company.erp, company_id)
    click.echo(
        f"{company_id} ({company.erp.value}): {limit.rate:g}/s, burst {limit.burst:g}, "
        f"{limit.concurrency} at once"
        f"{f', {limit.requests} requests in flight' if limit.requests else ''}"
    )


@click.command("demo")
@click.option("--companies", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("--projects", default=3, show_default=True, type=click.IntRange(0, 200))
@pass_ctx
def demo(ctx: Ctx, companies: int, projects: int) -> None:
    """Seed demo companies on several ERPs with projects, an admin each and sandbox data."""
    store, data = ctx.store, SandboxData(ctx.client, ctx.keys)
    for n in range(1, companies + 1):
        company_id, erp = f"demo-{n:02d}", DEMO_ERPS[(n - 1) % len(DEMO_ERPS)]
        admin = f"{company_id}-admin"
        with contextlib.suppress(AlreadyExists):
            store.add_company(company_id, erp.value, name=f"Demo Builders {n}")
        for p in range(1, projects + 1):
            with contextlib.suppress(AlreadyExists):
                store.add_project(company_id, f"p{p:02d}", name=f"Demo project {p}")
        if store.level_of(company_id, admin) is not PermissionLevel.ADMIN:
            store.grant(company_id, admin, PermissionLevel.ADMIN.value)
        if not data.seeded(company_id):
            data.configure(company_id, vendors=DEMO_VENDORS[(n - 1) % len(DEMO_VENDORS)])
            data.ensure_seeded(company_id)
        erp_now = store.get_company(company_id).erp.value
        click.echo(f"{company_id} ({erp_now}): {projects} projects, admin {admin}")


COMMANDS = [history, sync_now, reconcile, ratelimit, demo, sandbox]
