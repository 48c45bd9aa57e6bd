"""``company``, ``project`` and ``user`` subcommands: the operator's setup commands."""

from __future__ import annotations

import click

from config.models import Erp, PermissionLevel
from erp_sync.cli.context import Ctx, echo_json, pass_ctx, table


@click.group()
def company() -> None:
    """Companies (one ERP integration each)."""


@company.command("add")
@click.argument("company_id", metavar="COMPANY")
@click.option("--erp", required=True, help=f"ERP key, one of: {', '.join(Erp)}.")
@click.option("--name", help="Display name (defaults to the id).")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone.")
@pass_ctx
def company_add(ctx: Ctx, company_id: str, erp: str, name: str | None, timezone: str) -> None:
    """Create COMPANY with its ERP's default sync settings."""
    created = ctx.store.add_company(company_id, erp, name=name, timezone=timezone)
    click.echo(f"created company {created.id} ({created.erp.value}, {created.timezone})")


@company.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def company_list(ctx: Ctx, as_json: bool) -> None:
    """List every company."""
    companies = ctx.store.list_companies()
    if as_json:
        echo_json([c.model_dump(mode="json") for c in companies])
        return
    table([[c.id, c.name, c.erp.value, c.timezone] for c in companies],
          ["COMPANY", "NAME", "ERP", "TIMEZONE"])


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
    table([[p.id, p.name] for p in projects], ["PROJECT", "NAME"])


@click.group()
def user() -> None:
    """Permissions on a company's ERP Integrations tool."""


@user.command("grant")
@click.argument("company_id", metavar="COMPANY")
@click.argument("user_name", metavar="USER")
@click.option("--level", required=True, type=click.Choice([p.value for p in PermissionLevel]))
@pass_ctx
def user_grant(ctx: Ctx, company_id: str, user_name: str, level: str) -> None:
    """Give USER a permission LEVEL on COMPANY (admin may change the sync schedule)."""
    ctx.store.grant(company_id, user_name, level)
    click.echo(f"{user_name} has {level} on {company_id}")


COMMANDS = [company, project, user]
