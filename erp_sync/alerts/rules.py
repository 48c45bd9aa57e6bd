"""A company's webhook rules: add (an admin, audited), list, remove, read.

A rule whose URL is, or resolves to, an internal address (loopback, private, link-local,
metadata...; ``erp_sync.infra.egress``) is refused when it is added unless the operator allows
it in ``ERP_SYNC_OUTBOUND_ALLOW``.

Adding a rule that watches ``stale`` seeds a deadline for each of the company's enabled syncs
(``evaluate.seed_deadlines``), so a sync that never succeeds is noticed too.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from pydantic import ValidationError

from config.alerts import AlertEvent, AlertRule
from config.models import PermissionLevel, first_error, parse
from config.urls import mask_webhook_url
from erp_sync.control.inputs import user_id

# The sealed format's owner is the inventory of sealed secrets (rotate-key re-encrypts them);
# open_secret is re-exported for the delivery.
from erp_sync.control.sealed import open_secret as open_secret
from erp_sync.control.sealed import seal_secret
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import Denied, UnitOfWork
from erp_sync.errors import InvalidInput, NotFound, PermissionDenied
from erp_sync.infra.egress import check_target

MAX_RULES = 20
DEFAULT_EVENTS = (AlertEvent.FAILED, AlertEvent.STALE, AlertEvent.RECOVERED)


def parse_events(text: str | None) -> list[AlertEvent]:
    """``failed,stale,recovered`` (any subset, comma-separated); all three when omitted."""
    if text is None:
        return list(DEFAULT_EVENTS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    allowed = [e.value for e in DEFAULT_EVENTS]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        shown = repr(bad[0][:40]) if bad else "nothing"
        raise InvalidInput(f"--events: {shown} is not an event (any of: {', '.join(allowed)})")
    return [AlertEvent(n) for n in dict.fromkeys(names)]


class AlertRules:
    """Reads and admin writes of ``<prefix>:alerts:<company>``."""

    def __init__(self, store: SettingsStore) -> None:
        self.store, self.keys, self.client = store, store.keys, store.client

    def listed(self, company_id: str) -> list[AlertRule]:
        """The company's rules (``NotFound`` for an unknown company)."""
        self.store.get_company(company_id)
        return self.rules(company_id)

    def rules(self, company_id: str) -> list[AlertRule]:
        """The rules without checking the company (the evaluator's read)."""
        raw = self.client.hgetall(self.keys.alerts(company_id))
        return sorted(
            (parse(AlertRule, str(v), f"alert {k!r}") for k, v in raw.items()),
            key=lambda r: r.created_at,
        )

    def get(self, company_id: str, alert_id: str) -> AlertRule:
        self.store.get_company(company_id)
        raw = self.client.hget(self.keys.alerts(company_id), alert_id)
        if raw is None:
            raise NotFound(f"unknown alert {alert_id[:40]!r} in {company_id!r}")
        return parse(AlertRule, str(raw), f"alert {alert_id!r}")

    def add(
        self,
        company_id: str,
        actor: str,
        *,
        url: str,
        events: list[AlertEvent],
        failures: int,
        secret: str | None,
    ) -> AlertRule:
        user_id(actor)
        self.store.get_company(company_id)
        # Admin first (and the refusal logged): the URL check resolves host names, and its
        # answer must not let anyone who can type --as map the internal network.
        try:
            self.store.require(company_id, actor, PermissionLevel.ADMIN)
        except PermissionDenied:
            self.store.record_denied(
                Denied(company_id, actor, "alert.add", {"url": mask_webhook_url(url)})
            )
            raise
        try:
            rule = AlertRule(
                id=secrets.token_hex(4),
                company=company_id,
                url=url,
                events=events,
                failures=failures,
                created_by=actor,
                created_at=self.store.clock(),
            )
        except ValidationError as exc:
            raise InvalidInput(first_error(exc).removeprefix("url: ")) from None
        # An internal target is refused before anything is written (delivery refuses it again
        # on the address it connects to: a name may resolve elsewhere later).
        check_target(rule.url, "--url")
        if secret is not None:  # sealed before anything is written; no key: nothing written
            rule = AlertRule.model_validate({**rule.model_dump(), "secret": seal_secret(secret)})
        key = self.keys.alerts(company_id)

        def write(work: UnitOfWork) -> None:
            work.require_admin(company_id, actor)
            if work.pipe.hlen(key) >= MAX_RULES:
                raise InvalidInput(f"{company_id!r} already has {MAX_RULES} alerts")
            work.begin()
            work.pipe.hset(key, rule.id, rule.model_dump_json())
            work.audited(company_id, actor, "alert.add", {}, rule.public())

        self._transact(company_id, actor, "alert.add", key, write)
        return rule

    def remove(self, company_id: str, alert_id: str, actor: str) -> AlertRule:
        user_id(actor)
        rule = self.get(company_id, alert_id)
        key = self.keys.alerts(company_id)

        def write(work: UnitOfWork) -> None:
            work.require_admin(company_id, actor)
            if not work.pipe.hexists(key, alert_id):
                raise NotFound(f"unknown alert {alert_id[:40]!r} in {company_id!r}")
            work.begin()
            work.pipe.hdel(key, alert_id)
            work.audited(company_id, actor, "alert.remove", rule.public(), {})

        self._transact(company_id, actor, "alert.remove", key, write)
        return rule

    def _transact(
        self,
        company_id: str,
        actor: str,
        action: str,
        key: str,
        write: Callable[[UnitOfWork], None],
    ) -> None:
        self.store.transact(
            [key, self.keys.users(company_id)], write, Denied(company_id, actor, action)
        )
