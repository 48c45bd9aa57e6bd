"""The operator log's rows for operator commands that change what workers do.

Company admins' changes go to the company's audit log inside their own transaction; an operator's
(a rate limit, the sandbox ERP's data or faults, ``reconcile --fix``) is recorded in the operator
log (``operator-log``), stamped with the OS user who ran it, so every mutation of the fleet has a
row: inside the change's own transaction where it is a Redis write (``work.operator(
work.entry(..., OPERATOR, ...))``), else by ``record_operator`` once the change made elsewhere
(the database, the sandbox's own keys) succeeded.
"""

from __future__ import annotations

from typing import Any

from erp_sync.control.store import SettingsStore

OPERATOR = "operator"


def record_operator(
    store: SettingsStore,
    action: str,
    company: str,
    new: dict[str, Any],
    old: dict[str, Any] | None = None,
) -> None:
    """Write one operator-log row now (for a change that was not a Redis transaction)."""
    store.transact([], lambda work: work.operator(work.entry(company, OPERATOR, action, old, new)))
