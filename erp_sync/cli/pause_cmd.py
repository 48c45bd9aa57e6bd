"""``pause`` and ``resume``: stop a company's (or the whole fleet's) dispatching without touching
its settings, and start it again at the next slot (``erp_sync.control.pause``)."""

from __future__ import annotations

import click

from erp_sync.cli.beat_cmd import describe_pause
from erp_sync.cli.context import Ctx, pass_ctx
from erp_sync.control.pause import Pauses, parse_until
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import Denied, UnitOfWork
from erp_sync.errors import InvalidInput


def _target(company_id: str | None, all_: bool, actor: str | None) -> tuple[str | None, str]:
    """The company (None: the fleet) and the actor; refuses a mix of the two forms."""
    if all_ == (company_id is not None):
        raise click.UsageError("give either COMPANY (with --as) or --all")
    if company_id is not None and actor is None:
        raise click.UsageError("Missing option '--as' (an admin of COMPANY)")
    return company_id, actor or "operator"


@click.command("pause")
@click.argument("company_id", metavar="[COMPANY]", required=False)
@click.option("--all", "all_", is_flag=True, help="Pause the whole fleet (an operator action).")
@click.option("--as", "actor", metavar="USER", help="Acting admin of COMPANY.")
@click.option("--reason", help="Why (shown by schedule, status and the metrics).")
@click.option(
    "--until",
    "until",
    metavar="TIME|DURATION",
    help="Resume by itself then: an ISO time or a duration (30m, 2h, 1d).",
)
@pass_ctx
def pause(
    ctx: Ctx,
    company_id: str | None,
    all_: bool,
    actor: str | None,
    reason: str | None,
    until: str | None,
) -> None:
    """Pause COMPANY (or --all): nothing is dispatched until resumed; settings are kept."""
    company, who = _target(company_id, all_, actor)
    if company is None and not reason:
        raise click.UsageError("pause --all needs --reason")
    ends = parse_until(until, ctx.now()) if until is not None else None
    record = Pauses(ctx.store).pause(company, who, reason=reason, until=ends)
    click.echo(f"paused {company or 'the whole fleet'}: {describe_pause(record)}")


@click.command("resume")
@click.argument("company_id", metavar="[COMPANY]", required=False)
@click.option("--all", "all_", is_flag=True, help="End the fleet-wide pause (an operator).")
@click.option("--as", "actor", metavar="USER", help="Acting admin of COMPANY.")
@pass_ctx
def resume(ctx: Ctx, company_id: str | None, all_: bool, actor: str | None) -> None:
    """Resume COMPANY (or --all): its syncs continue at their next slot, with no catch-up."""
    company, who = _target(company_id, all_, actor)
    ended = Pauses(ctx.store).resume(company, who)
    click.echo(f"resumed {company or 'the whole fleet'} (was paused {describe_pause(ended)})")


def guard_manual_run(store: SettingsStore, company_id: str, actor: str, force: bool) -> None:
    """``sync-now`` on a paused company (or fleet) is refused unless ``--force`` by an admin,
    which is audited."""
    pauses = Pauses(store)
    record = pauses.get(company_id) or pauses.get(None)
    if record is None:
        return
    what = company_id if pauses.get(company_id) else "the whole fleet"
    if not force:
        raise InvalidInput(
            f"{what} is paused ({describe_pause(record)}); use --force (an admin) to run it anyway"
        )
    requested: dict[str, object] = {"paused_by": record.by, "reason": record.reason}

    def write(work: UnitOfWork) -> None:
        work.require_admin(company_id, actor)  # checked with the audit row, as one step
        work.audited(company_id, actor, "sync.force", {}, requested)

    store.transact(
        [store.keys.users(company_id)], write, Denied(company_id, actor, "sync.force", requested)
    )


COMMANDS = [pause, resume]
