"""Schedule arithmetic: pure functions from settings and a time to cadences and slot times.

No Redis, no clock: the time comes in as an argument, so tests never sleep to see a schedule.

A *cadence* says when an entry runs. Periodic cadences (hourly, every 2 or 4 hours) have slots
at ``k * period + offset`` on the epoch, where the offset is a stable hash of (company, sync): a
fleet spreads evenly over the period instead of firing at :00, and the same entry always lands on
the same slots, so a beat restart or a change elsewhere never shifts it. ``daily`` runs once per
local calendar day at a stable local time in the company's time zone: across a spring-forward gap
the nonexistent wall time is read with the pre-transition offset (it runs an hour later on the
wall clock that day), and in the repeated autumn hour only the first occurrence counts, so every
local day has exactly one slot. With a shrunk hour (``seconds_per_hour != 3600``, for demos and
tests) ``daily`` is a plain 24-hour period and time zones do not apply.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from config.models import PaymentsFrequency, SyncKind, SyncSettings

REAL_HOUR = 3600.0
FREQUENCY_HOURS: dict[PaymentsFrequency, int] = {
    PaymentsFrequency.HOURLY: 1,
    PaymentsFrequency.EVERY_2_HOURS: 2,
    PaymentsFrequency.EVERY_4_HOURS: 4,
}
FIXED_HOURS: dict[SyncKind, int] = {SyncKind.VENDORS: 1, SyncKind.JOBS: 1, SyncKind.JOB_COSTS: 2}


@dataclass(frozen=True)
class Cadence:
    """Either every ``period`` seconds, or daily in ``timezone`` (then ``period`` is one day)."""

    period: float
    timezone: str | None = None

    @property
    def key(self) -> str:
        """A stable text form; beat compares keys to tell whether an entry's timing changed."""
        return f"daily@{self.timezone}" if self.timezone else f"every:{self.period:g}"

    @classmethod
    def from_key(cls, key: str) -> Cadence:
        """The cadence a ``key`` stands for; ``ValueError`` for anything ``key`` never wrote."""
        if key.startswith("daily@"):
            return cls(24 * REAL_HOUR, key.removeprefix("daily@"))
        if not key.startswith("every:"):
            raise ValueError(f"not a cadence key: {key!r}")
        return cls(float(key.removeprefix("every:")))

    def describe(self) -> str:
        """How people read it (``schedule`` output)."""
        return f"daily ({self.timezone} local time)" if self.timezone else f"every {self.period:g}s"


def cadence_for(
    kind: SyncKind, settings: SyncSettings, timezone: str, seconds_per_hour: float
) -> Cadence | None:
    """The cadence of ``kind`` under ``settings``, or ``None`` when it does not run."""
    if kind not in settings.enabled_kinds():
        return None
    if kind is SyncKind.PAYMENTS:
        freq = settings.payments_for_synced_invoices
        if freq is PaymentsFrequency.DAILY:
            if seconds_per_hour == REAL_HOUR:
                return Cadence(24 * REAL_HOUR, timezone)
            return Cadence(24 * seconds_per_hour)
        return Cadence(FREQUENCY_HOURS[freq] * seconds_per_hour)
    return Cadence(FIXED_HOURS[kind] * seconds_per_hour)


def cadences(
    settings: SyncSettings, timezone: str, seconds_per_hour: float
) -> dict[SyncKind, Cadence]:
    """Every enabled sync of a company with its cadence."""
    out = {}
    for kind in SyncKind:
        cadence = cadence_for(kind, settings, timezone, seconds_per_hour)
        if cadence is not None:
            out[kind] = cadence
    return out


def stable_fraction(*parts: str) -> float:
    """A number in [0, 1) that depends only on ``parts`` (not on the process or Python's hash)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def offset(company: str, kind: SyncKind, period: float) -> float:
    """The entry's stable offset within its period, whole milliseconds."""
    return math.floor(stable_fraction(company, kind.value) * period * 1000) / 1000


def slot_at_or_before(cadence: Cadence, company: str, kind: SyncKind, t: float) -> float:
    """The latest slot not after ``t``: what runs (once) when an entry is found due at ``t``."""
    if cadence.timezone:
        return _daily_slot(cadence.timezone, company, kind, t, after=False)
    off = offset(company, kind, cadence.period)
    return math.floor((t - off) / cadence.period) * cadence.period + off


def slot_after(cadence: Cadence, company: str, kind: SyncKind, t: float) -> float:
    """The first slot strictly after ``t``."""
    if cadence.timezone:
        return _daily_slot(cadence.timezone, company, kind, t, after=True)
    off = offset(company, kind, cadence.period)
    return (math.floor((t - off) / cadence.period) + 1) * cadence.period + off


def local_run_time(company: str, kind: SyncKind) -> time:
    """The stable local wall time of a daily entry (any second of the day)."""
    seconds = int(stable_fraction(company, kind.value, "daily") * 86_400)
    return time(seconds // 3600, seconds // 60 % 60, seconds % 60)


def daily_slot_on(day: date, tz: ZoneInfo, at: time) -> float:
    """The one slot of local ``day``: fold=0 picks the first of a repeated wall time, and a
    wall time inside a spring-forward gap maps through the pre-transition offset."""
    return datetime.combine(day, at, tzinfo=tz).replace(fold=0).astimezone(UTC).timestamp()


def _daily_slot(timezone: str, company: str, kind: SyncKind, t: float, *, after: bool) -> float:
    tz = ZoneInfo(timezone)
    at = local_run_time(company, kind)
    today = datetime.fromtimestamp(t, tz).date()
    candidates = [daily_slot_on(today + timedelta(days=d), tz, at) for d in (-2, -1, 0, 1, 2)]
    if after:
        return min(c for c in candidates if c > t)
    return max(c for c in candidates if c <= t)
