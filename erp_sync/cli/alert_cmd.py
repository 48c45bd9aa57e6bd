"""``alert add|list|remove|test|log``: a company's failure-alert webhooks.

Adding and removing need admin and are audited; the secret comes from a file (``-`` reads
stdin), never from argv, and is never printed; a URL whose host is internal is refused when the
rule is added (``erp_sync.infra.egress``) and lists show it masked
(``config.urls.mask_webhook_url``).
``alert test`` posts a ``test`` event now, from this process, and records it in the delivery
log like any other delivery.
"""

from __future__ import annotations

import sys

import click

from config.alerts import AlertEvent
from erp_sync.alerts.deliver import deliver_once, deliveries
from erp_sync.alerts.evaluate import Evaluator, RunOutcome, payload, redis_now
from erp_sync.alerts.rules import AlertRules, parse_events
from erp_sync.cli.context import Ctx, echo_json, pass_ctx, table
from erp_sync.errors import ErpSyncError, InvalidInput


def _read_secret(path: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.read(2001)
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(2001)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read --secret-file: {type(exc).__name__}") from None
    secret = text.rstrip("\r\n")
    if not secret or len(secret) > 1000 or not secret.isprintable():
        raise InvalidInput("--secret-file must hold 1-1000 printable characters")
    return secret


@click.group()
def alert() -> None:
    """Webhooks told when a company's syncs fail, go stale or recover."""


@alert.command("add")
@click.argument("company_id", metavar="COMPANY")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (needs admin).")
@click.option(
    "--url",
    required=True,
    help="http(s) URL the alerts are POSTed to (JSON); internal targets (loopback, private, "
    "link-local, metadata) are refused unless allowed in ERP_SYNC_OUTBOUND_ALLOW.",
)
@click.option("--events", help="Comma-separated: failed,stale,recovered (default: all three).")
@click.option(
    "--failures",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Consecutive failures that make an incident (1: the first failure).",
)
@click.option(
    "--secret-file", metavar="FILE", help="HMAC-SHA256 signing secret, read from FILE ('-': stdin)."
)
@pass_ctx
def alert_add(
    ctx: Ctx,
    company_id: str,
    actor: str,
    url: str,
    events: str | None,
    failures: int,
    secret_file: str | None,
) -> None:
    """Add a webhook alert to COMPANY as USER (an admin)."""
    secret = _read_secret(secret_file) if secret_file is not None else None
    rule = AlertRules(ctx.store).add(
        company_id, actor, url=url, events=parse_events(events), failures=failures, secret=secret
    )
    if AlertEvent.STALE in rule.events:
        Evaluator(
            ctx.client, ctx.keys, ctx.env.seconds_per_hour, lambda _r, _m: None
        ).seed_deadlines(company_id)
    shown = rule.public()
    click.echo(
        f"added alert {rule.id} for {company_id}: {shown['url']} "
        f"({','.join(shown['events'])}{', signed' if rule.secret else ''})"
    )


@alert.command("list")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def alert_list(ctx: Ctx, company_id: str, as_json: bool) -> None:
    """COMPANY's alerts (URLs masked: no password, path beyond its first segment or query;
    secrets never shown)."""
    rules = [r.public() for r in AlertRules(ctx.store).listed(company_id)]
    if as_json:
        echo_json(rules)
        return
    table(
        [
            [
                r["id"],
                r["url"],
                ",".join(r["events"]),
                str(r["failures"]),
                "yes" if r["signed"] else "no",
                r["created_by"],
            ]
            for r in rules
        ],
        ["ID", "URL", "EVENTS", "AFTER", "SIGNED", "BY"],
    )


@alert.command("remove")
@click.argument("company_id", metavar="COMPANY")
@click.argument("alert_id", metavar="ALERT_ID")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (needs admin).")
@pass_ctx
def alert_remove(ctx: Ctx, company_id: str, alert_id: str, actor: str) -> None:
    """Remove an alert from COMPANY as USER (an admin)."""
    AlertRules(ctx.store).remove(company_id, alert_id, actor)
    click.echo(f"removed alert {alert_id} from {company_id}")


@alert.command("test")
@click.argument("company_id", metavar="COMPANY")
@click.argument("alert_id", metavar="ALERT_ID")
@pass_ctx
def alert_test(ctx: Ctx, company_id: str, alert_id: str) -> None:
    """POST a test event to an alert's webhook now (logged like any delivery; a failed
    attempt, redirects included, is one error line)."""
    rule = AlertRules(ctx.store).get(company_id, alert_id)
    message = payload(
        rule,
        AlertEvent.TEST,
        RunOutcome(company_id, "-", None, "test", None, ""),
        redis_now(ctx.client),
    )
    outcome = deliver_once(
        ctx.client, ctx.keys, company_id, alert_id, message, 1, True, ctx.env.alert_timeout_seconds
    )
    last = deliveries(ctx.client, ctx.keys, company_id, 1)[0]
    if outcome != "delivered":
        raise ErpSyncError(f"test delivery to alert {alert_id} failed: {last.error}")
    click.echo(f"delivered test alert {message['delivery']} (HTTP {last.status_code})")


@alert.command("log")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@pass_ctx
def alert_log(ctx: Ctx, company_id: str, as_json: bool, limit: int) -> None:
    """COMPANY's webhook deliveries, newest first (one row per attempt)."""
    ctx.store.get_company(company_id)
    entries = deliveries(ctx.client, ctx.keys, company_id, limit)
    if as_json:
        echo_json([e.model_dump(mode="json") for e in entries])
        return
    table(
        [
            [
                f"{e.at:%Y-%m-%d %H:%M:%S}",
                e.alert,
                e.event.value,
                e.delivery,
                str(e.attempt),
                e.outcome,
                str(e.status_code or ""),
                e.error or "",
            ]
            for e in entries
        ],
        ["AT (UTC)", "ALERT", "EVENT", "DELIVERY", "ATTEMPT", "OUTCOME", "HTTP", "ERROR"],
    )


COMMANDS = [alert]
