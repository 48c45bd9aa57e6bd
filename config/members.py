"""The member and field strings of the fleet-wide keys that name a company, and their parsers.

A fleet-wide hash or sorted set (beat's due index, its last-slot marks, the alert deadlines, the
rate-limit overrides) holds one member per company (and sync, and project). Whoever writes such
a string must be able to read it back, and removing a company must find every one of them, so
each format is spelt here once with its parser, beside the key names (``config.keys``), instead
of in the module that happens to write it first. Company and project ids never contain ``:``
(``config.models``), so every split is unambiguous.
"""

from __future__ import annotations

from config.models import SyncKind

SEP = ":"
NO_PROJECT = "-"  # the project segment of a company-level sync; never a valid project id


def due_member(company: str, kind: SyncKind) -> str:
    """A member of beat's due index and of its last-slot hash: ``company:kind``."""
    return f"{company}{SEP}{kind.value}"


def split_due_member(value: str) -> tuple[str, SyncKind]:
    """(company, kind) of a due-index member; ``ValueError`` for anything ``due_member`` never
    made."""
    company, _, kind = value.rpartition(SEP)
    if not company:
        raise ValueError(f"not a due-index member: {value!r}")
    return company, SyncKind(kind)


def alert_target(kind: str, project: str | None) -> str:
    """The field of a company's alert-state hash for one sync: ``kind:project`` (``-``: none)."""
    return f"{kind}{SEP}{project or NO_PROJECT}"


def deadline_member(company: str, kind: str, project: str | None) -> str:
    """A member of the fleet's staleness deadlines: ``company:kind:project``."""
    return f"{company}{SEP}{kind}{SEP}{project or NO_PROJECT}"


def split_deadline(member: str) -> tuple[str, SyncKind, str | None]:
    """(company, kind, project) of a deadline member; ``ValueError`` if it is not one."""
    company, kind, project = member.split(SEP)
    return company, SyncKind(kind), None if project == NO_PROJECT else project


def last_run_field(status: str, kind: str) -> str:
    """The field of the fleet's latest finished runs (``runs:last``): ``status:kind``."""
    return f"{status}{SEP}{kind}"


def limit_field(company: str) -> str:
    """The rate-limit overrides' field of a company's own limit (ERP keys never contain ':')."""
    return f"company{SEP}{company}"
