"""Every key of the key space that belongs to one company, and what removing the company does.

``company remove`` used to delete a hand-written list of key kinds, and whatever the list forgot
outlived the company: its ERP connection, the cached access token, the webhook delivery log,
its rate-limit override. A company added later under the same id inherited the old tenant's
encrypted credentials. Here every per-company key of ``KeySpace`` is declared once with its fate
(``tests/test_keys.py`` fails if a key method is missing), and ``removal`` turns the
declaration into the exact deletes that the removal transaction runs.

Kept on purpose: the audit log and the security log (who did what stays answerable), the run
records (the database's history is built from them), the sandbox ERP's own data (it stands in
for the ERP, which a removal in the platform does not touch) and the legacy Redis copy of the
Procore-side records (``db import-redis`` moves it). Run locks and executed markers expire by
themselves within hours and are left to expire: a run in flight still owns its lock.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from config.keys import KeySpace
from config.members import deadline_member, due_member, limit_field
from config.models import SyncKind
from config.validation import casefold_key


class OnRemoval(StrEnum):
    """What ``company remove`` does to a per-company key."""

    DELETE = "delete"
    KEEP = "keep"
    EXPIRES = "expires"  # a short-lived key with a TTL of its own: left to expire
    CHANNEL = "channel"  # a pub/sub channel: nothing is stored


# Every ``KeySpace`` method that takes a company, with its fate. The test of this module checks
# the list against the class, so a new per-company key cannot be added without a decision.
COMPANY_KEYS: dict[str, OnRemoval] = {
    "company": OnRemoval.DELETE,
    "projects": OnRemoval.DELETE,
    "users": OnRemoval.DELETE,
    "settings": OnRemoval.DELETE,
    "audit": OnRemoval.KEEP,
    "denied": OnRemoval.KEEP,
    "job_cost_optouts": OnRemoval.DELETE,
    "alerts": OnRemoval.DELETE,
    "alert_state": OnRemoval.DELETE,
    "alert_log": OnRemoval.DELETE,
    "alert_outbox": OnRemoval.DELETE,
    "alert_slots": OnRemoval.DELETE,
    "applied_channel": OnRemoval.CHANNEL,
    "history": OnRemoval.KEEP,
    "runs": OnRemoval.KEEP,
    "run_lock": OnRemoval.EXPIRES,
    "running": OnRemoval.DELETE,
    "rate_limit": OnRemoval.DELETE,
    "erp": OnRemoval.KEEP,
    "erp_meta": OnRemoval.KEEP,
    "erp_index": OnRemoval.KEEP,
    "erp_calls": OnRemoval.KEEP,
    "procore": OnRemoval.KEEP,
    "cursor": OnRemoval.DELETE,
    "connection": OnRemoval.DELETE,
    "access_token": OnRemoval.DELETE,
    "token_refresh_lock": OnRemoval.DELETE,
    "mirror_lock": OnRemoval.DELETE,
    "mirror_seen": OnRemoval.DELETE,
    "request_slots": OnRemoval.DELETE,
}

# Keys named by something other than the company id that still belong to one company run:
# ``executed(task_id)`` (the task id names the company) expires by itself like the run locks.
# ``alert_claim(delivery)`` (a webhook delivery's claim) expires by itself too.
# ``alert_evaluated(task_id)`` (a run counted in its incident) expires by itself too.
TASK_KEYS: dict[str, OnRemoval] = {
    "executed": OnRemoval.EXPIRES,
    "alert_claim": OnRemoval.EXPIRES,
    "alert_evaluated": OnRemoval.EXPIRES,
}


@dataclass
class Removal:
    """The writes that remove one company: whole keys, hash fields, set and sorted-set members."""

    delete: list[str] = field(default_factory=list)
    hdel: dict[str, list[str]] = field(default_factory=dict)
    srem: dict[str, list[str]] = field(default_factory=dict)
    zrem: dict[str, list[str]] = field(default_factory=dict)


def company_methods() -> dict[str, tuple[str, ...]]:
    """Every ``KeySpace`` method whose first argument is a company, with its argument names."""
    found: dict[str, tuple[str, ...]] = {}
    for name, member in vars(KeySpace).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        params = tuple(inspect.signature(member).parameters)[1:]
        if params[:1] == ("company",):
            found[name] = params
    return found


def removal(keys: KeySpace, company: str, projects: Iterable[str]) -> Removal:
    """What removing ``company`` (with these projects) deletes, from ``COMPANY_KEYS``."""
    targets: list[str | None] = [None, *projects]
    out = Removal()
    for name, params in company_methods().items():
        if COMPANY_KEYS[name] is not OnRemoval.DELETE:
            continue
        method = getattr(keys, name)
        if params == ("company",):
            out.delete.append(method(company))
        elif params == ("company", "kind", "project"):
            out.delete += [method(company, k.value, p) for k in SyncKind for p in targets]
        else:  # a deleted key must be one removal can enumerate
            raise TypeError(f"KeySpace.{name}{params}: removal cannot enumerate these keys")
    dues = [due_member(company, k) for k in SyncKind]
    out.srem[keys.companies] = [company]
    out.hdel = {
        keys.company_folds: [casefold_key(company)],
        keys.paused: [company],
        keys.beat_slots: dues,
        keys.beat_applied: [company],
        keys.rate_limit_overrides: [limit_field(company)],
    }
    out.zrem = {
        keys.paused_until: [company],
        keys.due: dues,
        keys.alert_deadlines: [
            deadline_member(company, k.value, p) for k in SyncKind for p in targets
        ],
        keys.alert_outbox_due: [company],
    }
    return out
