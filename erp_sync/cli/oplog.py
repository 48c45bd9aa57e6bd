"""The operator log's rows for operator commands that change what workers do.

Company admins' changes go to the company's audit log inside their own transaction; an operator's
(a rate limit, the sandbox ERP's data or faults, ``reconcile --fix``) is recorded here, in the
operator log (``operator-log``), stamped with the OS user who ran it, so every mutation of the
fleet has a row. ``operator_entry`` is queued inside the caller's transaction where the change is
a Redis write; ``record_operator`` writes the row after a change made elsewhere (the database,
the sandbox's own keys) succeeded.
"""

from __future__ import annotations

from typing import Any

from config.models import AuditEntry
from erp_sync.control.store import SettingsStore

OPERATOR = "operator"


def operator_entry(
    store: SettingsStore,
    action: str,
    company: str,
    new: dict[str, Any],
    old: dict[str, Any] | None = None,
) -> AuditEntry:
    """A row of the operator log (``company`` ``*`` for a fleet-wide change)."""
    return AuditEntry(
        at=store.clock(), actor=OPERATOR, action=action, company=company, old=old or {}, new=new
    )


def record_operator(
    store: SettingsStore,
    action: str,
    company: str,
    new: dict[str, Any],
    old: dict[str, Any] | None = None,
) -> None:
    """Write one operator-log row now (for a change that was not a Redis transaction)."""
    entry = operator_entry(store, action, company, new, old)
    store.transact([], lambda work: work.operator(entry))
