"""The schedule heals itself: the leader checks schedule state against settings, slice by slice.

Each slice reads a bounded number of companies (one pipelined round trip), checks them with
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
from config.models import Company, StoredSettings, SyncKind, parse
from erp_sync.applied import Applied
from erp_sync.beat.index import NOT_LEADER, DueIndex
from erp_sync.beat.plan import member
from erp_sync.beat.repair import Finding, Observed, check_company

log = logging.getLogger("erp_sync.beat")
M = TypeVar("M", Company, StoredSettings)
KINDS = list(SyncKind)


def inspect(client: redis.Redis, keys: KeySpace, ids: Sequence[str], now: float,
            seconds_per_hour: float) -> list[Finding]:
    """Check each company's schedule against its settings (one pipelined round trip)."""
    pipe = client.pipeline(transaction=False)
    for company in ids:
        pipe.get(keys.company(company))
        pipe.get(keys.settings(company))
        pipe.hget(keys.beat_applied, company)
        for kind in KINDS:
            pipe.zscore(keys.due, member(company, kind))
        pipe.hmget(keys.beat_slots, [member(company, kind) for kind in KINDS])
    replies = pipe.execute(raise_on_error=False)
    width = 4 + len(KINDS)
    findings = []
    for n, company in enumerate(ids):
        raw_company, raw_settings, raw_applied, *rest = replies[n * width:(n + 1) * width]
        scores, last = rest[:len(KINDS)], rest[len(KINDS)]
        try:
            record = _read(Company, raw_company, f"company {company!r}")
            stored = _read(StoredSettings, raw_settings, f"settings of {company!r}")
        except CorruptRecord as exc:
            findings.append(Finding(company, [f"cannot check: {exc}"], None))
            continue
        applied, corrupt = _applied(raw_applied)
        seen = Observed(
            applied=applied, applied_corrupt=corrupt,
            scores={k: float(s) for k, s in zip(KINDS, scores, strict=True)
                    if isinstance(s, int | float)},
            last_slots={k: float(v) for k, v in zip(KINDS, last if isinstance(last, list)
                                                    else [None] * len(KINDS), strict=True)
                        if _number(v)})
        findings.append(check_company(company, record, stored, seen, now, seconds_per_hour))
    return findings


class Sweeper:
    """The leader's continuous check; ``tick`` runs at most one bounded slice."""

    def __init__(self, client: redis.Redis, keys: KeySpace, index: DueIndex,
                 clock: Callable[[], float], seconds_per_hour: float, period: float,
                 slice_size: int = 200) -> None:
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

    def tick(self, token: str) -> bool:
        """Run a slice if one is due; False when the lease was lost (nothing was written)."""
        now = self.clock()
        if now < self._next_at:
            return True
        if self._started is None:
            self._started, self._total = now, int(self.client.scard(self.keys.companies))
        ids = self._next_ids()
        findings = [f for f in inspect(self.client, self.keys, ids, now, self.seconds_per_hour)
                    if f.problems]
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
            cursor, applied = self.client.hscan(self.keys.beat_applied, at,
                                                count=self.slice_size)
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
        self._reported.add(marker)
        done = "rebuilt from settings" if finding.plan else "left alone"
        log.warning("schedule repair company=%s: %s; %s", finding.company,
                    "; ".join(finding.problems), done)

    def _progress(self, now: float, done: bool) -> None:
        fields: dict[str | bytes, str | float | int] = {
            "pass_started_at": self._started or now, "checked": self._checked,
            "companies": self._total, "repaired": self._repaired, "period": self.period}
        if done:
            fields.update(last_pass_completed_at=now,
                          last_pass_seconds=round(now - (self._started or now), 3),
                          last_pass_repaired=self._repaired, last_pass_checked=self._checked)
        self.client.hset(self.keys.beat_sweep, mapping=fields)  # type: ignore[arg-type]


def _read(model: type[M], raw: object, what: str) -> M | None:
    if raw is None:
        return None
    if isinstance(raw, Exception):
        raise CorruptRecord(f"stored {what} is unreadable ({str(raw).splitlines()[0][:80]})")
    return parse(model, str(raw), what)


def _applied(raw: object) -> tuple[Applied | None, bool]:
    if raw is None or isinstance(raw, Exception):
        return None, isinstance(raw, Exception)
    try:
        return Applied.model_validate_json(str(raw)), False
    except ValueError:
        return None, True


def _number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return value is not None
