"""Checking one company's live schedule against its stored settings, and the plan that heals it.

Pure, like ``plan.py``: what Redis holds comes in as an ``Observed`` value and the time as an
argument. The stored settings are the source of truth; the due index and beat's applied record
are derived state, so anything missing, extra, corrupt or stale there is rebuilt from them.

A rebuilt entry resumes where it can prove it is safe to: if the entry's last dispatched slot
(``beat:slots``) is known and older than the current slot, the current slot has not run and is
scheduled now (a lost due index loses no run); otherwise the next slot. Either way the dispatch
script refuses any slot at or before the last one dispatched, so a repair never sends twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from config.members import due_member
from config.models import Company, StoredSettings, SyncKind
from erp_sync.beat.plan import CompanyPlan
from erp_sync.schedule.applied import Applied
from erp_sync.schedule.cadence import Cadence, cadences, slot_after, slot_at_or_before

TOLERANCE = 0.001  # seconds: scores are whole milliseconds


@dataclass(frozen=True)
class Observed:
    """What Redis holds for one company's schedule."""

    applied: Applied | None = None
    applied_corrupt: bool = False
    scores: dict[SyncKind, float] = field(default_factory=dict)  # due members present
    last_slots: dict[SyncKind, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """The differences found for one company and the plan that removes them (if any)."""

    company: str
    problems: list[str]
    plan: CompanyPlan | None


def check_company(
    company_id: str,
    company: Company | None,
    stored: StoredSettings | None,
    seen: Observed,
    now: float,
    seconds_per_hour: float,
) -> Finding:
    """Compare ``seen`` with what ``company``'s stored settings imply at ``now``."""
    if company is None:  # gone (or never added) yet scheduled: remove what remains
        if seen.applied is None and not seen.scores and not seen.applied_corrupt:
            return Finding(company_id, [], None)
        removals = [("rem", due_member(company_id, k), 0.0) for k in sorted(seen.scores)]
        return Finding(
            company_id,
            ["the company is gone but its schedule remains"],
            CompanyPlan(company_id, None, removals),
        )
    if stored is None:
        return Finding(
            company_id,
            [
                "its stored settings are missing or unreadable: cannot "
                "rebuild (fix the settings record)"
            ],
            None,
        )
    expected = cadences(stored.settings, company.timezone, seconds_per_hour)
    problems: list[str] = []
    if seen.applied_corrupt:
        problems.append("beat's applied record is corrupt")
    elif seen.applied is None:
        problems.append("beat's applied record is missing")
    elif seen.applied.version != stored.version:
        problems.append(
            f"applied version {seen.applied.version} is not settings version {stored.version}"
        )
    old = seen.applied.cadences if seen.applied else {}
    ops: list[tuple[str, str, float]] = []
    for kind, cadence in expected.items():
        score = seen.scores.get(kind)
        changed = kind.value in old and old[kind.value] != cadence.key
        if changed:
            problems.append(f"{kind.value} runs {old[kind.value]}, settings say {cadence.key}")
            ops.append(
                ("set", due_member(company_id, kind), slot_after(cadence, company_id, kind, now))
            )
        elif score is None:
            problems.append(f"{kind.value} has no due entry")
            ops.append(
                (
                    "set",
                    due_member(company_id, kind),
                    _resume(cadence, company_id, kind, seen.last_slots.get(kind), now),
                )
            )
        elif not _valid(cadence, company_id, kind, score, now):
            problems.append(f"{kind.value} has an invalid due time {score!r}")
            ops.append(
                (
                    "set",
                    due_member(company_id, kind),
                    _resume(cadence, company_id, kind, seen.last_slots.get(kind), now),
                )
            )
        else:
            ops.append(("nx", due_member(company_id, kind), score))
    for kind in sorted(set(seen.scores) - set(expected)):
        problems.append(f"{kind.value} has a due entry but is switched off")
        ops.append(("rem", due_member(company_id, kind), 0.0))
    if not problems:
        return Finding(company_id, [], None)
    applied = Applied(
        version=stored.version, cadences={k.value: c.key for k, c in expected.items()}
    )
    return Finding(company_id, problems, CompanyPlan(company_id, applied, ops))


def _valid(cadence: Cadence, company: str, kind: SyncKind, score: float, now: float) -> bool:
    """A due time is one of the cadence's slots, and not further ahead than one period."""
    horizon = now + cadence.period + 3600.0 * (cadence.timezone is not None)
    if not math.isfinite(score) or not now - 400 * 86_400 < score <= horizon:
        return False  # inf, NaN, or out of range (checked first: dates overflow out there)
    return abs(slot_at_or_before(cadence, company, kind, score + TOLERANCE) - score) <= TOLERANCE


def _resume(
    cadence: Cadence, company: str, kind: SyncKind, last: float | None, now: float
) -> float:
    """Where a rebuilt entry resumes: the current slot if it provably has not run, else next."""
    current = slot_at_or_before(cadence, company, kind, now)
    if last is not None and math.isfinite(last) and current > last + TOLERANCE:
        return current
    return slot_after(cadence, company, kind, now)
