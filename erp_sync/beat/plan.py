"""What beat should do, decided without I/O: entries for a changed company, slots for due ones.

Kept pure so the rules (timing of unchanged entries is kept, a changed cadence starts at its next
slot, a missed slot runs once) are unit-tested without Redis or a clock.
"""

from __future__ import annotations

import functools
from collections.abc import Container
from dataclasses import dataclass, field

from config.members import due_member, split_due_member
from config.models import Company, StoredSettings, SyncKind, SyncSettings, is_identifier
from erp_sync.schedule.applied import Applied
from erp_sync.schedule.cadence import Cadence, cadences, slot_after, slot_at_or_before


@dataclass(frozen=True)
class CompanyPlan:
    """Due-index operations for one company and the record beat stores once they are done.

    ``ops`` are (op, member, score): ``nx`` adds the entry only if missing (its cadence did not
    change, so its timing is kept), ``set`` (re)schedules it, ``rem`` removes it.
    """

    company: str
    applied: Applied | None
    ops: list[tuple[str, str, float]] = field(default_factory=list)


def plan_company(
    company_id: str,
    company: Company | None,
    stored: StoredSettings | None,
    old: Applied | None,
    now: float,
    seconds_per_hour: float,
    present: Container[SyncKind] = (),
) -> CompanyPlan:
    """The due-index changes that make ``company_id``'s entries match its stored settings.

    ``present``: the kinds whose entries the caller saw in the index. An unchanged entry that is
    present needs no op at all (an ``nx`` add would do nothing), so its next slot is not even
    computed: a rebuild or a storm of one-setting changes plans a fraction of the slots.
    """
    old_cadences = old.cadences if old else {}
    if company is None or stored is None:  # the company is gone: drop its entries
        return CompanyPlan(
            company_id,
            None,
            [("rem", due_member(company_id, SyncKind(k)), 0.0) for k in old_cadences],
        )
    new, new_keys = _cadences(stored.settings, company.timezone, seconds_per_hour)
    ops: list[tuple[str, str, float]] = []
    for kind, cadence in new.items():
        unchanged = old_cadences.get(kind.value) == cadence.key
        if unchanged and kind in present:
            continue
        ops.append(
            (
                "nx" if unchanged else "set",
                due_member(company_id, kind),
                slot_after(cadence, company_id, kind, now),
            )
        )
    ops += [
        ("rem", due_member(company_id, SyncKind(k)), 0.0)
        for k in old_cadences
        if SyncKind(k) not in new
    ]
    # Built from cadences just computed, so valid by construction: no re-validation per company.
    applied = Applied.model_construct(version=stored.version, cadences=dict(new_keys))
    return CompanyPlan(company_id, applied, ops)


@functools.lru_cache(maxsize=1024)
def _cadences(
    settings: SyncSettings, timezone: str, seconds_per_hour: float
) -> tuple[dict[SyncKind, Cadence], dict[str, str]]:
    """``cadences`` and their keys, remembered: a fleet has few distinct (settings, zone) pairs,
    and a rebuild or a storm plans thousands of companies a second. Callers never mutate them."""
    new = cadences(settings, timezone, seconds_per_hour)
    return new, {k.value: c.key for k, c in new.items()}


@dataclass(frozen=True)
class Dispatch:
    """One due entry: the slot it runs now and when it is due next (``None``: drop the entry)."""

    member: str
    expected_score: float
    company: str
    kind: SyncKind
    slot: float
    next_score: float | None
    projects: tuple[str, ...] = ()


def plan_dispatch(
    entry: str, score: float, applied: Applied | None, projects: list[str], now: float
) -> Dispatch:
    """The single slot a due entry runs now: however many periods were missed, it runs once."""
    company, kind = split_due_member(entry)
    key = applied.cadences.get(kind.value) if applied else None
    if key is None:  # the entry outlived its company's record: remove it, run nothing
        return Dispatch(entry, score, company, kind, score, None)
    cadence = Cadence.from_key(key)
    slot = max(slot_at_or_before(cadence, company, kind, now), score)
    # A project id the store would refuse (a corrupt projects hash) gets no task: its task id
    # could not be read back. The rest of the company's projects run.
    return Dispatch(
        entry,
        score,
        company,
        kind,
        slot,
        slot_after(cadence, company, kind, max(now, slot)),
        tuple(sorted(p for p in projects if is_identifier(p))) if kind.project_level else (),
    )
