"""The schedule heals itself: the leader checks schedule state against settings, slice by slice.

Each slice reads a bounded number of companies (five bulk commands in one pipelined round trip,
plus the scans that pick them and one progress write), checks them with
``repair.check_company`` and applies the repairs with the same fenced script as a settings
change. Slices are spaced so that a full pass over every company takes about
``ERP_SYNC_SWEEP_SECONDS`` (60 s by default), whatever the number of companies: the work per
slice is bounded, only the spacing adapts. Companies that no longer exist but still have
schedule state are found by scanning beat's applied records alongside the company set.

Every repair is logged once (company, what was wrong, what was done) and counted (``repairs``
in beat's counters, a metric); the pass's progress is kept in ``<prefix>:beat:sweep`` for
``erp-sync doctor``. ``inspect`` is also what ``doctor`` runs over every company.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import redis

from config.errors import CorruptRecord
from config.keys import KeySpace
from config.members import due_member
from config.models import Company, StoredSettings, SyncKind, parse
from erp_sync.beat.index import NOT_LEADER, DueIndex
from erp_sync.beat.repair import Finding, Observed, check_company
from erp_sync.schedule.applied import Applied, parse_applied

log = logging.getLogger("erp_sync.beat")
M = TypeVar("M", Company, StoredSettings)
KINDS = list(SyncKind)


def inspect(
    client: redis.Redis, keys: KeySpace, ids: Sequence[str], now: float, seconds_per_hour: float
) -> list[Finding]:
    """Check each company's schedule against its settings.

    Five bulk commands in one pipelined round trip, whatever the number of companies (the
    per-command cost of redis-py, not Redis, dominates a per-company pipeline).
    """
    if not ids:
        return []
    members = [due_member(company, kind) for company in ids for kind in KINDS]
    pipe = client.pipeline(transaction=False)
    pipe.mget([keys.company(c) for c in ids])
    pipe.mget([keys.settings(c) for c in ids])
    pipe.hmget(keys.beat_applied, list(ids))
    pipe.zmscore(keys.due, members)
    pipe.hmget(keys.beat_slots, members)
    companies, settings, applied, scores, last = pipe.execute(raise_on_error=False)
    width = len(KINDS)
    findings = []
    for n, company in enumerate(ids):
        try:
            record = _read(Company, _at(companies, n), f"company {company!r}")
            stored = _read(StoredSettings, _at(settings, n), f"settings of {company!r}")
        except CorruptRecord as exc:
            findings.append(Finding(company, [f"cannot check: {exc}"], None))
            continue
        record_applied, corrupt = _applied(_at(applied, n))
        seen = Observed(
            applied=record_applied,
            applied_corrupt=corrupt,
            scores={
                k: float(v)
                for k, v in zip(KINDS, _row(scores, n, width), strict=True)
                if isinstance(v, int | float)
            },
            last_slots={
                k: float(str(v))
                for k, v in zip(KINDS, _row(last, n, width), strict=True)
                if _number(v)
            },
        )
        try:
            findings.append(check_company(company, record, stored, seen, now, seconds_per_hour))
        except Exception as exc:  # one company's odd state must not stop the whole slice
            findings.append(Finding(company, [f"cannot check: {type(exc).__name__}: {exc}"], None))
    return findings


def _at(reply: object, n: int) -> object:
    """Item ``n`` of a bulk reply; a failed command (a key of the wrong type) reads as missing."""
    return reply[n] if isinstance(reply, list) else None


def _row(reply: object, n: int, width: int) -> list[object]:
    return reply[n * width : (n + 1) * width] if isinstance(reply, list) else [None] * width


class Sweeper:
    """The leader's continuous check; ``tick`` runs at most one bounded slice."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        index: DueIndex,
        clock: Callable[[], float],
        seconds_per_hour: float,
        period: float,
        slice_size: int = 200,
    ) -> None:
        self.client, self.keys, self.index, self.clock = client, keys, index, clock
        self.seconds_per_hour, self.period, self.slice_size = seconds_per_hour, period, slice_size
        self._next_at = 0.0
        self._reported: set[tuple[str, tuple[str, ...]]] = set()
        self._restart()

    def _restart(self) -> None:
        # SCAN cursors of this pass; None once that scan has wrapped around.
        self._cursors: dict[str, int | None] = {"companies": 0, "applied": 0}
        self._started: float | None = None
        self._checked = self._repaired = self._total = 0

    def next_in(self) -> float:
        """Seconds until the next slice is due."""
        return max(0.0, self._next_at - self.clock())

    @property
    def pass_running(self) -> bool:
        """Whether a pass has started and not yet covered every company (benchmarks read it;
        the engine does not)."""
        return self._started is not None

    def start_pass(self) -> None:
        """Forget the current pass; the next slice starts a new one from the beginning (tests
        and benchmarks drive it)."""
        self._restart()

    def tick(self, token: str) -> bool:
        """Run a slice if one is due; False when the lease was lost (nothing was written)."""
        if self.clock() < self._next_at:
            return True
        return self.slice(token)

    def slice(self, token: str) -> bool:
        """Check (and repair) the next slice of companies now; False when fenced out."""
        now = self.clock()
        if self._started is None:
            self._started, self._total = now, int(self.client.scard(self.keys.companies))
        ids = self._next_ids()
        findings = [
            f
            for f in inspect(self.client, self.keys, ids, now, self.seconds_per_hour)
            if f.problems
        ]
        plans = [f.plan for f in findings if f.plan is not None]
        if plans:
            versions = {p.company: p.applied.version for p in plans if p.applied}
            if self.index.apply(token, plans, versions, None) == NOT_LEADER:
                return False
            self.client.hincrby(self.keys.beat_stats, "repairs", len(plans))
        for finding in findings:
            self._report(finding)
        self._checked += len(ids)
        self._repaired += len(plans)
        done = all(c is None for c in self._cursors.values())
        self._progress(now, done)
        if done:
            self._restart()
        # Bounded work per slice; the spacing spreads a pass over ``period`` seconds.
        self._next_at = now + self.period * self.slice_size / max(self._total, self.slice_size)
        return True

    def _next_ids(self) -> list[str]:
        ids: list[str] = []
        at = self._cursors["companies"]
        if at is not None:
            cursor, found = self.client.sscan(self.keys.companies, at, count=self.slice_size)
            ids += [str(c) for c in found]
            self._cursors["companies"] = int(cursor) or None
        at = self._cursors["applied"]
        if at is not None:
            cursor, applied = self.client.hscan(self.keys.beat_applied, at, count=self.slice_size)
            self._cursors["applied"] = int(cursor) or None
            if applied:  # beat state of companies missing from the company set: orphans
                names = [str(c) for c in applied]
                known = self.client.smismember(self.keys.companies, names)
                ids += [c for c, k in zip(names, known, strict=True) if not k and c not in ids]
        return ids

    def _report(self, finding: Finding) -> None:
        marker = (finding.company, tuple(finding.problems))
        if marker in self._reported:
            return
        if len(self._reported) > 10_000:  # "once" per leader tenure, within bounded memory
            self._reported.clear()
        self._reported.add(marker)
        done = "rebuilt from settings" if finding.plan else "left alone"
        log.warning(
            "schedule repair company=%s: %s; %s", finding.company, "; ".join(finding.problems), done
        )

    def _progress(self, now: float, done: bool) -> None:
        fields: dict[str | bytes, str | float | int] = {
            "pass_started_at": self._started or now,
            "checked": self._checked,
            "companies": self._total,
            "repaired": self._repaired,
            "period": self.period,
        }
        if done:
            fields.update(
                last_pass_completed_at=now,
                last_pass_seconds=round(now - (self._started or now), 3),
                last_pass_repaired=self._repaired,
                last_pass_checked=self._checked,
            )
        self.client.hset(self.keys.beat_sweep, mapping=fields)  # type: ignore[arg-type]


def _read(model: type[M], raw: object, what: str) -> M | None:
    if raw is None:
        return None
    if isinstance(raw, Exception):
        raise CorruptRecord(f"stored {what} is unreadable ({str(raw).splitlines()[0][:80]})")
    return parse(model, str(raw), what)


def _applied(raw: object) -> tuple[Applied | None, bool]:
    """The record and whether one was there but unreadable (missing and corrupt differ here)."""
    record = parse_applied(raw)
    return record, raw is not None and record is None


def _number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return value is not None
