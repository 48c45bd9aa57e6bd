"""``company``, ``project`` and ``user`` subcommands: setting up what the schedule runs on.

``company add`` is an operator action (recorded in the operator log, ``operator-log``); it names
the company's first admin with ``--admin``. From then on ``user grant`` and ``user revoke`` act
``--as`` an admin of that company (``erp_sync.control.permissions``).
"""

from __future__ import annotations

import click

from config.models import Erp, PermissionLevel
from erp_sync.cli.context import Ctx, echo_json, pass_ctx, table
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.permissions import Permissions
from erp_sync.db.audit import AuditArchive


@click.group()
def company() -> None:
    """Companies (one ERP integration each)."""


@company.command("add")
@click.argument("company_id", metavar="COMPANY")
@click.option("--erp", required=True, help=f"ERP key, one of: {', '.join(Erp)}.")
@click.option("--name", help="Display name (defaults to the id).")
@click.option(
    "--timezone",
    default="UTC",
    show_default=True,
    help="Canonical IANA time zone (e.g. America/Chicago).",
)
@click.option("--admin", metavar="USER", help="The company's first admin (who may then grant).")
@pass_ctx
def company_add(
    ctx: Ctx, company_id: str, erp: str, name: str | None, timezone: str, admin: str | None
) -> None:
    """Create COMPANY with its ERP's default sync settings (an operator action)."""
    created = ctx.store.add_company(company_id, erp, name=name, timezone=timezone, admin=admin)
    click.echo(
        f"created company {created.id} ({created.erp.value}, {created.timezone})"
        + (f", admin {admin}" if admin else "")
    )
    if admin is None:
        click.echo(
            f"warning: {created.id} has no admin: give it one with `user grant "
            f"{created.id} USER --level admin --as USER`",
            err=True,
        )


@company.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def company_list(ctx: Ctx, as_json: bool) -> None:
    """List every company."""
    companies = ctx.store.list_companies()
    if as_json:
        echo_json([c.model_dump(mode="json") for c in companies])
        return
    table(
        [[c.id, c.name, c.erp.value, c.timezone] for c in companies],
        ["COMPANY", "NAME", "ERP", "TIMEZONE"],
    )


@company.command("set")
@click.argument("company_id", metavar="COMPANY")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (needs admin).")
@click.option("--name", help="New display name.")
@click.option("--timezone", help="New canonical IANA time zone (moves daily runs, live).")
@pass_ctx
def company_set(
    ctx: Ctx, company_id: str, actor: str, name: str | None, timezone: str | None
) -> None:
    """Rename COMPANY or change its time zone as USER (an admin)."""
    updated, changed = Lifecycle(ctx.store).set_company(
        company_id, actor, name=name, timezone=timezone
    )
    if not changed:
        click.echo(f"no change: {company_id} already has these values", err=True)
    click.echo(f"{updated.id}: {updated.name} ({updated.erp.value}, {updated.timezone})")


@company.command("remove")
@click.argument("company_id", metavar="COMPANY")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (needs admin).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def company_remove(ctx: Ctx, company_id: str, actor: str, yes: bool) -> None:
    """Remove COMPANY as USER (an admin): its schedule stops at once; history and audit stay."""
    ctx.store.get_company(company_id)
    if not yes:
        click.confirm(
            f"Remove {company_id}, its projects, users and schedule?", abort=True, err=True
        )
    Lifecycle(ctx.store).remove_company(company_id, actor)
    click.echo(f"removed company {company_id} (its history and audit are kept)")


@click.group()
def project() -> None:
    """Projects of a company (project-level syncs run per project)."""


@project.command("add")
@click.argument("company_id", metavar="COMPANY")
@click.argument("project_id", metavar="PROJECT")
@click.option("--name", help="Display name (defaults to the id).")
@pass_ctx
def project_add(ctx: Ctx, company_id: str, project_id: str, name: str | None) -> None:
    """Add PROJECT to COMPANY."""
    created = ctx.store.add_project(company_id, project_id, name=name)
    click.echo(f"created project {created.id} in {company_id}")


@project.command("list")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def project_list(ctx: Ctx, company_id: str, as_json: bool) -> None:
    """List COMPANY's projects."""
    projects = ctx.store.list_projects(company_id)
    if as_json:
        echo_json([p.model_dump(mode="json") for p in projects])
        return
    table(
        [[p.id, p.name, "on" if p.sync_job_costs else "off (opted out)"] for p in projects],
        ["PROJECT", "NAME", "JOB COSTS"],
    )


@project.command("set")
@click.argument("company_id", metavar="COMPANY")
@click.argument("project_id", metavar="PROJECT")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (needs admin).")
@click.option(
    "--sync-job-costs/--no-sync-job-costs",
    default=None,
    help="Whether this project's job costs sync (Procore's per-project setting).",
)
@pass_ctx
def project_set(
    ctx: Ctx, company_id: str, project_id: str, actor: str, sync_job_costs: bool | None
) -> None:
    """Opt PROJECT in or out of job-cost syncing as USER (an admin); live at the next slot."""
    updated, changed = Lifecycle(ctx.store).set_project(
        company_id, project_id, actor, sync_job_costs=sync_job_costs
    )
    if not changed:
        click.echo(f"no change: {project_id} already has this value", err=True)
    click.echo(
        f"{company_id}/{updated.id}: job costs "
        f"{'on' if updated.sync_job_costs else 'off (opted out)'}"
    )


@project.command("remove")
@click.argument("company_id", metavar="COMPANY")
@click.argument("project_id", metavar="PROJECT")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (needs admin).")
@pass_ctx
def project_remove(ctx: Ctx, company_id: str, project_id: str, actor: str) -> None:
    """Remove PROJECT from COMPANY as USER (an admin); its run history is kept."""
    Lifecycle(ctx.store).remove_project(company_id, project_id, actor)
    click.echo(f"removed project {project_id} from {company_id}")


@click.group()
def user() -> None:
    """Permissions on a company's ERP Integrations tool."""


@user.command("grant")
@click.argument("company_id", metavar="COMPANY")
@click.argument("user_name", metavar="USER")
@click.option("--level", required=True, type=click.Choice([p.value for p in PermissionLevel]))
@click.option("--as", "actor", required=True, metavar="ADMIN", help="Acting admin of COMPANY.")
@pass_ctx
def user_grant(ctx: Ctx, company_id: str, user_name: str, level: str, actor: str) -> None:
    """Give USER a permission LEVEL on COMPANY (admin may change the sync schedule)."""
    Permissions(ctx.store).grant(company_id, user_name, level, actor)
    click.echo(f"{user_name} has {level} on {company_id}")


@user.command("revoke")
@click.argument("company_id", metavar="COMPANY")
@click.argument("user_name", metavar="USER")
@click.option("--as", "actor", required=True, metavar="ADMIN", help="Acting admin of COMPANY.")
@pass_ctx
def user_revoke(ctx: Ctx, company_id: str, user_name: str, actor: str) -> None:
    """Remove USER's permission on COMPANY (the last admin cannot be removed)."""
    old = Permissions(ctx.store).revoke(company_id, user_name, actor)
    click.echo(f"{user_name} no longer has {old} on {company_id}")


@user.command("list")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def user_list(ctx: Ctx, company_id: str, as_json: bool) -> None:
    """Users with a permission level on COMPANY, admins first."""
    rows = Permissions(ctx.store).users(company_id)
    if as_json:
        echo_json([{"user": u, "level": level.value} for u, level in rows])
        return
    table([[u, level.value] for u, level in rows], ["USER", "LEVEL"])


@click.command("operator-log")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@pass_ctx
def operator_log(ctx: Ctx, as_json: bool, limit: int) -> None:
    """Operator actions no company admin made (company add, fleet pause), newest first.

    The newest entries come from Redis, older ones from the database (archived hourly)."""
    entries, warning = AuditArchive(ctx.db).extend(
        "operator", None, ctx.store.operator_log(limit), limit
    )
    if warning:
        click.echo(warning, err=True)
    if as_json:
        echo_json([e.model_dump(mode="json") for e in entries])
        return
    table(
        [
            [
                f"{e.at:%Y-%m-%d %H:%M:%S}",
                e.actor,
                e.os_user or "",
                e.action,
                e.company,
                ", ".join(f"{k}: {v}" for k, v in e.new.items()),
            ]
            for e in entries
        ],
        ["AT (UTC)", "ACTOR", "OS USER", "ACTION", "COMPANY", "DETAILS"],
    )


COMMANDS = [company, project, user, operator_log]
