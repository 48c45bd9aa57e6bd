"""``settings show|set`` and ``audit``: what admins use to change a company's sync schedule."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from click.decorators import FC

from config.models import (
    CAPABILITIES,
    TOGGLES,
    Erp,
    PaymentsFrequency,
    StoredSettings,
    SyncKind,
    SyncSettings,
)
from erp_sync.cli.context import Ctx, echo_json, note_if_removed, pass_ctx, table
from erp_sync.db.audit import AuditArchive
from erp_sync.schedule.applied import AppliedWaiter


def not_supported(erp: str) -> list[str]:
    """The settings whose sync the ERP does not support (the payments frequency goes with
    payments), in the settings' own order."""
    supported = CAPABILITIES[Erp(erp)]
    return [
        name
        for name in SyncSettings.model_fields
        if TOGGLES.get(name, SyncKind.PAYMENTS) not in supported
    ]


def settings_json(stored: StoredSettings, erp: str) -> dict[str, Any]:
    """The fixed ``settings show --json`` shape (DESIGN.md), plus ``not_supported``: the
    settings the company's ERP has no sync for."""
    return {
        "company": stored.company,
        "erp": erp,
        "version": stored.version,
        "settings": stored.settings.model_dump(mode="json"),
        "not_supported": not_supported(erp),
    }


def print_settings(stored: StoredSettings, erp: str) -> None:
    click.echo(
        f"{stored.company} ({erp}) settings version {stored.version}, "
        f"updated {stored.updated_at:%Y-%m-%d %H:%M:%S} UTC by {stored.updated_by}"
    )
    rows = []
    unsupported = set(not_supported(erp))
    for name, value in stored.settings.model_dump(mode="json").items():
        shown = ("on" if value else "off") if isinstance(value, bool) else value
        if name in unsupported:
            shown = f"{shown} (not supported by {erp})"
        # The sync kind names what `schedule`, `history` and `sync-now` call the same sync.
        kind = TOGGLES[name].value if name in TOGGLES else f"{SyncKind.PAYMENTS.value} frequency"
        rows.append([name, str(shown), kind])
    table(rows, ["SETTING", "VALUE", "SYNC"])


@click.group()
def settings() -> None:
    """A company's sync schedule settings."""


@settings.command("show")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def settings_show(ctx: Ctx, company_id: str, as_json: bool) -> None:
    """Show COMPANY's sync settings."""
    company = ctx.store.get_company(company_id)
    stored = ctx.store.sync_settings(company_id)
    if as_json:
        echo_json(settings_json(stored, company.erp.value))
    else:
        print_settings(stored, company.erp.value)


def _toggle(flag: str, field: str, text: str) -> Callable[[FC], FC]:
    return click.option(f"--{flag}/--no-{flag}", field, default=None, help=text)


@settings.command("set")
@click.argument("company_id", metavar="COMPANY")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (needs admin).")
@click.option(
    "--payments-frequency",
    "payments_for_synced_invoices",
    type=click.Choice([f.value for f in PaymentsFrequency]),
    help="How often payments for synced invoices sync.",
)
@_toggle("sync-job-costs", "sync_project_job_costs", "Sync project job costs (every 2 hours).")
@_toggle("refresh-companies", "refresh_erp_companies_list", "Refresh the ERP vendor list (hourly).")
@_toggle("refresh-jobs", "refresh_erp_job_list", "Refresh the ERP job list (hourly).")
@_toggle("sync-payments", "sync_payments_for_synced_invoices", "Sync payments for synced invoices.")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the leading beat has applied the change.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def settings_set(
    ctx: Ctx, /, company_id: str, actor: str, wait: bool, as_json: bool, **changes: Any
) -> None:
    """Change COMPANY's sync settings as USER; beat applies the change live."""
    change = {k: v for k, v in changes.items() if v is not None}
    if not change:
        raise click.UsageError("nothing to change: give at least one setting option")
    store = ctx.store
    company = store.get_company(company_id)
    waiter = AppliedWaiter(ctx.client, ctx.keys, company_id) if wait else None
    try:
        stored, changed = store.update_settings(company_id, actor, change)
    except BaseException:
        if waiter:
            waiter.close()
        raise
    written = time.monotonic()
    out = settings_json(stored, company.erp.value)
    if not changed:
        click.echo(f"no change: {company_id} already has these settings", err=True)
    if waiter:
        applied_ms = waiter.wait(stored.version, ctx.env.settings_wait_seconds, written)
        if applied_ms is None:
            out["applied"] = False
            click.echo(
                f"warning: no beat applied version {stored.version} within "
                f"{ctx.env.settings_wait_seconds:g}s; it will be applied when a beat runs",
                err=True,
            )
        else:
            out["applied_ms"] = round(applied_ms, 2)
    if as_json:
        echo_json(out)
        return
    print_settings(stored, company.erp.value)
    if "applied_ms" in out:
        click.echo(f"applied by beat in {out['applied_ms']} ms")


@click.command("audit")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--denied", is_flag=True, help="List refused settings changes (the security log) instead."
)
@pass_ctx
def audit(ctx: Ctx, company_id: str, as_json: bool, limit: int, denied: bool) -> None:
    """COMPANY's audit log, newest first: who changed what, when, old and new values.

    The newest entries come from Redis, older ones from the database (archived hourly)."""
    note_if_removed(ctx, company_id)
    recent = (ctx.store.denied if denied else ctx.store.audit)(company_id, limit)
    entries, warning = AuditArchive(ctx.db).extend(
        "denied" if denied else "audit", company_id, recent, limit
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
                e.action,
                str(e.version or ""),
                ", ".join(f"{k}: {e.old.get(k)} -> {v}" for k, v in e.new.items()),
            ]
            for e in entries
        ],
        ["AT (UTC)", "ACTOR", "ACTION", "VERSION", "CHANGES"],
    )


COMMANDS = [settings, audit]
