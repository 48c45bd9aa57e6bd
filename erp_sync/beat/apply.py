"""Applying companies' settings to the due index: a batch of changes, or a full rebuild.

A batch of companies costs two round trips to read (their records and settings with one
``MGET``, beat's applied records with one ``HMGET``; which of their entries are in the index, as
one string from ``due_present.lua``), pure planning (``plan.plan_company``), and one fenced
``due_apply.lua`` call. A full rebuild (first start, or changes lost to a trimmed stream) is the
same, over every company in batches, a few per step, so entries that are already valid keep being
dispatched meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from config.keys import KeySpace
from config.members import due_member
from config.models import Company, StoredSettings, SyncKind, parse
from erp_sync.beat.changes import ChangeFeed
from erp_sync.beat.index import NOT_LEADER, DueIndex
from erp_sync.beat.plan import CompanyPlan, plan_company
from erp_sync.errors import CorruptRecord
from erp_sync.schedule.applied import Applied, parse_applied

log = logging.getLogger("erp_sync.beat")


class Applier:
    """Plans and applies batches of companies; also the one parser of beat's applied records
    for the engine (remembered by raw record: most companies share a few)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        index: DueIndex,
        clock: Callable[[], float],
        seconds_per_hour: float,
    ) -> None:
        self.client, self.keys, self.index = client, keys, index
        self.clock, self.seconds_per_hour = clock, seconds_per_hour
        self._reported: set[tuple[str, int]] = set()
        self._applied_seen: dict[str, Applied | None] = {}  # raw record -> parsed

    def apply(self, token: str, companies: Iterable[str], cursor: str | None) -> bool:
        """Plan and apply these companies' schedules (and store ``cursor`` with them, when
        given) in one fenced script call; False when ``token`` no longer holds the lease."""
        ids = list(companies)
        now = self.clock()
        raws, old, present = self._read_companies(ids)
        plans: list[CompanyPlan] = []
        versions: dict[str, int] = {}
        moved: list[CompanyPlan] = []  # the plans that change something, named in the log
        for n, company in enumerate(ids):
            loaded = self._load(company, raws[2 * n], raws[2 * n + 1])
            if loaded is None:
                continue
            record, stored = loaded
            try:
                plans.append(
                    plan_company(
                        company, record, stored, old[n], now, self.seconds_per_hour, present[n]
                    )
                )
            except Exception as exc:  # one company must never stop every other's changes
                log.error("skipping company=%s: cannot plan its schedule: %s", company, exc)
                continue
            versions[company] = stored.version if stored else 0
            if plans[-1].ops or plans[-1].applied != old[n]:
                moved.append(plans[-1])
        if self.index.apply(token, plans, versions, cursor) == NOT_LEADER:
            return False
        same = len(plans) - len(moved)  # most of a rebuild: counted, not named
        if moved:  # one line per batch naming each company whose schedule moved
            log.info(
                "applied companies=%d%s: %s",
                len(moved),
                f" (and {same} unchanged)" if same else "",
                " ".join(
                    f"{p.company}@{versions.get(p.company)}"
                    f"({','.join(sorted(p.applied.cadences)) if p.applied else '-'})"
                    for p in moved
                ),
            )
        elif plans:
            log.debug("applied companies=%d, every one unchanged", len(plans))
        return True

    def _read_companies(
        self, ids: list[str]
    ) -> tuple[list[object], list[Applied | None], list[set[SyncKind]]]:
        """Each company's record and settings (flat, two per company), beat's applied record
        and the kinds it has in the due index: three commands, two round trips."""
        if not ids:  # an empty rebuild still stores its cursor: nothing to read
            return [], [], []
        kinds = list(SyncKind)
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([k for c in ids for k in (self.keys.company(c), self.keys.settings(c))])
        pipe.hmget(self.keys.beat_applied, ids)
        raws, applied = pipe.execute(raise_on_error=False)
        for reply in (raws, applied):
            if isinstance(reply, Exception):
                raise reply
        found = self.index.present([due_member(c, k) for c in ids for k in kinds])
        missing = [i for i, raw in enumerate(raws) if raw is None]
        if missing:  # MGET reads a key of the wrong type as missing: GET tells them apart
            pipe = self.client.pipeline(transaction=False)
            for i in missing:
                pipe.get(
                    self.keys.company(ids[i // 2])
                    if i % 2 == 0
                    else self.keys.settings(ids[i // 2])
                )
            # One company's key of the wrong Redis type must not fail the whole batch.
            for i, raw in zip(missing, pipe.execute(raise_on_error=False), strict=True):
                raws[i] = raw
        present = [
            {k for j, k in enumerate(kinds) if found[n * len(kinds) + j]} for n in range(len(ids))
        ]
        return raws, [self.applied(r) for r in applied], present

    def applied(self, raw: object) -> Applied | None:
        """``parse_applied``, remembered by the raw record: most companies share a few."""
        if not isinstance(raw, str):
            return parse_applied(raw)
        if raw not in self._applied_seen:
            if len(self._applied_seen) >= 10_000:
                self._applied_seen.clear()
            self._applied_seen[raw] = parse_applied(raw)
        return self._applied_seen[raw]

    def _load(
        self, company: str, raw_company: object, raw_settings: object
    ) -> tuple[Company | None, StoredSettings | None] | None:
        if raw_company is None:
            return None, None
        try:
            for raw, what in ((raw_company, "company"), (raw_settings, "settings")):
                if isinstance(raw, Exception):
                    raise CorruptRecord(
                        f"stored {what} of {company!r} is unreadable "
                        f"({str(raw).splitlines()[0][:80]})"
                    )
            record = parse(Company, str(raw_company), f"company {company!r}")
            stored = parse(StoredSettings, str(raw_settings or ""), f"settings of {company!r}")
        except CorruptRecord as exc:
            marker = (company, hash(str(raw_settings)))
            if marker not in self._reported:  # say it once, keep serving everyone else
                self._reported.add(marker)
                log.error("skipping company=%s: %s", company, exc)
            return None
        return record, stored


@dataclass
class Rebuild:
    """A full rebuild in progress: the companies, how far it got, the stream head at its start
    (changes after it are replayed, idempotently, once it is done)."""

    ids: list[str]
    head: str
    started: float
    pos: int = 0

    @classmethod
    def begin(cls, client: redis.Redis, keys: KeySpace, feed: ChangeFeed) -> Rebuild:
        head = feed.head()  # taken first: changes after it are replayed, idempotently
        ids = [str(c) for c in client.sscan_iter(keys.companies, count=1000)]
        return cls(ids, head, time.monotonic())

    def next_batch(self, size: int) -> tuple[list[str], str | None]:
        """The next companies, and the cursor to store with them (only with the last batch)."""
        batch = self.ids[self.pos : self.pos + size]
        self.pos += len(batch)
        return batch, (self.head if self.done else None)

    @property
    def done(self) -> bool:
        return self.pos >= len(self.ids)
