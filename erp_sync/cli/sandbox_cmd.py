"""``sandbox ...``: change a company's sandbox ERP over time and tune its latency and faults.

Every subcommand checks its input (company, project, values) before writing, so bad input
writes nothing; the first change to a company seeds its sandbox data, as any first use does.
"""

from __future__ import annotations

from typing import Any

import click

from erp_sync.cli.context import Ctx, echo_json, pass_ctx
from erp_sync.cli.oplog import record_operator
from erp_sync.connectors.sandbox_data import SandboxConfig, SandboxData
from erp_sync.errors import InvalidInput, NotFound


def _data(ctx: Ctx, company_id: str, project: str | None = None) -> SandboxData:
    ctx.store.get_company(company_id)
    if project is not None and not ctx.client.hexists(ctx.keys.projects(company_id), project):
        raise NotFound(f"unknown project {project!r} in {company_id!r}")
    return SandboxData(ctx.client, ctx.keys)


def _cents(amount: float) -> int:
    if not 0 < amount < 1e10:
        raise InvalidInput(f"amount must be positive dollars, got {amount:g}")
    return round(amount * 100)


@click.group()
def sandbox() -> None:
    """The sandbox ERP (the default connector): its data, latency and faults."""


@sandbox.command("show")
@click.argument("company_id", metavar="COMPANY")
@pass_ctx
def sandbox_show(ctx: Ctx, company_id: str) -> None:
    """COMPANY's sandbox configuration and whether its data is seeded."""
    data = _data(ctx, company_id)
    echo_json(
        {
            "company": company_id,
            "seeded": data.seeded(company_id),
            "config": data.config(company_id).model_dump(),
        }
    )


_FLOATS = (
    "latency_ms",
    "transient_rate",
    "rate_limited_rate",
    "timeout_rate",
    "retry_after",
    "timeout_s",
)
_INTS = (
    "vendors",
    "cost_codes",
    "extra_jobs",
    "project_cost_codes",
    "costs_per_job",
    "invoices_per_job",
    "page_size",
)


def _options(f: Any) -> Any:
    for name in reversed(_FLOATS + _INTS):
        flag = "--" + name.replace("_", "-")
        help_text = SandboxConfig.model_fields[name].description or name.replace("_", " ")
        f = click.option(flag, name, type=float if name in _FLOATS else int, help=help_text)(f)
    return f


@sandbox.command("set")
@click.argument("company_id", metavar="COMPANY")
@_options
@click.option(
    "--permanent",
    type=click.Choice(["bad_credentials", "none"]),
    help="A permanent fault on every call, or none.",
)
@click.option(
    "--fail-kind",
    type=click.Choice(["server_error", "rate_limited", "timeout", "bad_credentials"]),
    help="What --fail-next calls fail with.",
)
@click.option(
    "--fail-next",
    type=click.IntRange(0, 1_000_000),
    help="Fail the next N ERP calls with --fail-kind.",
)
@pass_ctx
def sandbox_set(ctx: Ctx, /, company_id: str, fail_next: int | None, **options: Any) -> None:
    """Tune COMPANY's sandbox: sizes (used when first seeded), paging, latency and faults."""
    data = _data(ctx, company_id)
    changes = {k: v for k, v in options.items() if v is not None}
    if changes.get("permanent") == "none":
        changes["permanent"] = None
    if not changes and fail_next is None:
        raise click.UsageError("nothing to change: give at least one option")
    config = data.configure(company_id, **changes) if changes else data.config(company_id)
    if fail_next is not None:
        data.fail_next(company_id, fail_next)
    logged = {**changes, **({"fail_next": fail_next} if fail_next is not None else {})}
    record_operator(ctx.store, "sandbox.set", company_id, logged)
    echo_json(
        {
            "company": company_id,
            "config": config.model_dump(),
            **({"fail_next": fail_next} if fail_next is not None else {}),
        }
    )


@sandbox.command("add-vendor")
@click.argument("company_id", metavar="COMPANY")
@click.argument("name")
@pass_ctx
def add_vendor(ctx: Ctx, company_id: str, name: str) -> None:
    """Add a vendor called NAME to COMPANY's ERP."""
    if not name.strip() or len(name) > 200:
        raise InvalidInput("vendor name must be 1-200 characters")
    added = _data(ctx, company_id).add_vendor(company_id, name)
    record_operator(ctx.store, "sandbox.add_vendor", company_id, {"name": name})
    echo_json(added)


@sandbox.command("add-cost")
@click.argument("company_id", metavar="COMPANY")
@click.argument("project", metavar="PROJECT")
@click.option("--amount", type=float, required=True, help="Dollars.")
@click.option("--cost-code", default="", help="Cost code (default: none).")
@pass_ctx
def add_cost(ctx: Ctx, company_id: str, project: str, amount: float, cost_code: str) -> None:
    """Post a job cost transaction to PROJECT's job in COMPANY's ERP."""
    cents = _cents(amount)
    added = _data(ctx, company_id, project).add_cost(company_id, project, cents, cost_code)
    record_operator(
        ctx.store,
        "sandbox.add_cost",
        company_id,
        {"project": project, "amount_cents": cents, "cost_code": cost_code},
    )
    echo_json(added)


@sandbox.command("add-payment")
@click.argument("company_id", metavar="COMPANY")
@click.argument("project", metavar="PROJECT")
@click.option("--amount", type=float, required=True, help="Dollars.")
@click.option("--invoice", help="Invoice paid (default: the job's first invoice).")
@pass_ctx
def add_payment(
    ctx: Ctx, company_id: str, project: str, amount: float, invoice: str | None
) -> None:
    """Record a bill payment against an invoice of PROJECT's job in COMPANY's ERP."""
    cents = _cents(amount)
    data = _data(ctx, company_id, project)
    added = data.add_payment(company_id, project, cents, invoice)
    record_operator(
        ctx.store,
        "sandbox.add_payment",
        company_id,
        {"project": project, "amount_cents": cents, "invoice": invoice},
    )
    echo_json(added)


@sandbox.command("delete-vendor")
@click.argument("company_id", metavar="COMPANY")
@click.argument("vendor", metavar="VENDOR_ID")
@pass_ctx
def delete_vendor(ctx: Ctx, company_id: str, vendor: str) -> None:
    """Delete vendor VENDOR_ID in COMPANY's ERP (the next vendors sync marks it deleted)."""
    data = _data(ctx, company_id)
    data.ensure_seeded(company_id)
    revision = data.delete(company_id, "vendors", vendor)
    record_operator(ctx.store, "sandbox.delete_vendor", company_id, {"vendor": vendor})
    echo_json({"company": company_id, "vendor": vendor, "deleted": True, "revision": revision})
