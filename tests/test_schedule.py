"""Schedule arithmetic, pure: cadences, stable offsets, daily across DST, catch-up."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from config.models import Company, PaymentsFrequency, StoredSettings, SyncKind, SyncSettings
from erp_sync.beat.plan import plan_company, plan_dispatch
from erp_sync.schedule.applied import Applied
from erp_sync.schedule.cadence import (
    Cadence,
    cadence_for,
    cadences,
    local_run_time,
    offset,
    slot_after,
    slot_at_or_before,
)

H = 3600.0
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()


def ts(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def test_company_syncs_are_hourly_and_project_syncs_every_two_hours() -> None:
    s = SyncSettings()
    assert cadence_for(SyncKind.VENDORS, s, "UTC", H) == Cadence(H)
    assert cadence_for(SyncKind.JOBS, s, "UTC", H) == Cadence(H)
    assert cadence_for(SyncKind.JOB_COSTS, s, "UTC", H) == Cadence(2 * H)


@pytest.mark.parametrize(
    ("freq", "hours"), [("hourly", 1), ("every_2_hours", 2), ("every_4_hours", 4)]
)
def test_payments_follow_their_frequency(freq: str, hours: int) -> None:
    s = SyncSettings(payments_for_synced_invoices=PaymentsFrequency(freq))
    assert cadence_for(SyncKind.PAYMENTS, s, "UTC", H) == Cadence(hours * H)


def test_never_and_switched_off_syncs_have_no_cadence() -> None:
    s = SyncSettings(
        payments_for_synced_invoices=PaymentsFrequency.NEVER, refresh_erp_job_list=False
    )
    assert set(cadences(s, "UTC", H)) == {SyncKind.VENDORS, SyncKind.JOB_COSTS}


def test_a_shrunk_hour_scales_every_cadence_and_makes_daily_a_plain_period() -> None:
    s = SyncSettings()
    assert cadence_for(SyncKind.JOB_COSTS, s, "America/Chicago", 2) == Cadence(4)
    assert cadence_for(SyncKind.PAYMENTS, s, "America/Chicago", 2) == Cadence(48)
    assert cadence_for(SyncKind.PAYMENTS, s, "America/Chicago", H) == Cadence(
        24 * H, "America/Chicago"
    )


def test_offsets_are_stable_and_spread_a_fleet_over_the_period() -> None:
    assert offset("acme", SyncKind.VENDORS, H) == offset("acme", SyncKind.VENDORS, H)
    offsets = [offset(f"c{i}", SyncKind.VENDORS, H) for i in range(6000)]
    assert all(0 <= o < H for o in offsets)
    per_minute = [0] * 60
    for o in offsets:
        per_minute[int(o // 60)] += 1
    # 100 expected per minute; a fleet firing at :00 would put all 6000 in one bucket.
    assert max(per_minute) < 160 and min(per_minute) > 50


def test_slots_are_one_period_apart_on_the_entry_offset() -> None:
    c = Cadence(2 * H)
    first = slot_after(c, "acme", SyncKind.JOB_COSTS, T0)
    assert T0 < first <= T0 + 2 * H
    assert slot_after(c, "acme", SyncKind.JOB_COSTS, first) == first + 2 * H
    assert slot_at_or_before(c, "acme", SyncKind.JOB_COSTS, first) == first
    assert slot_at_or_before(c, "acme", SyncKind.JOB_COSTS, first - 1) == first - 2 * H
    assert (first - offset("acme", SyncKind.JOB_COSTS, 2 * H)) % (2 * H) == 0


DAILY = Cadence(24 * H, "America/Chicago")


def _daily_slots(company: str, start: str, days: int) -> list[datetime]:
    t = ts(start, "America/Chicago")
    out = []
    for _ in range(days):
        t = slot_after(DAILY, company, SyncKind.PAYMENTS, t)
        out.append(datetime.fromtimestamp(t, ZoneInfo("America/Chicago")))
    return out


def _company_running_at(hour: int, minute_range: tuple[int, int] = (0, 60)) -> str:
    for n in range(100_000):
        at = local_run_time(f"co{n}", SyncKind.PAYMENTS)
        if at.hour == hour and minute_range[0] <= at.minute < minute_range[1]:
            return f"co{n}"
    raise AssertionError("no such company id found")


def test_daily_runs_once_per_local_day_at_a_stable_local_time() -> None:
    company = _company_running_at(14)
    slots = _daily_slots(company, "2026-03-01T00:00:00", 20)
    assert [s.date().day for s in slots] == list(range(1, 21))
    assert {(s.hour, s.minute, s.second) for s in slots} == {
        (
            local_run_time(company, SyncKind.PAYMENTS).hour,
            local_run_time(company, SyncKind.PAYMENTS).minute,
            local_run_time(company, SyncKind.PAYMENTS).second,
        )
    }


def test_daily_in_the_spring_forward_gap_runs_once_an_hour_later_that_day() -> None:
    # 2026-03-08 02:00 -> 03:00 in Chicago: 02:xx does not exist that day.
    company = _company_running_at(2)
    slots = _daily_slots(company, "2026-03-06T12:00:00", 4)
    assert [s.day for s in slots] == [7, 8, 9, 10]
    assert [s.hour for s in slots] == [2, 3, 2, 2]
    gaps = [(b.timestamp() - a.timestamp()) / H for a, b in itertools.pairwise(slots)]
    assert gaps == [24, 23, 24]  # never twice, never skipped


def test_daily_in_the_repeated_autumn_hour_runs_only_once() -> None:
    # 2026-11-01 02:00 CDT -> 01:00 CST in Chicago: 01:xx happens twice.
    company = _company_running_at(1)
    slots = _daily_slots(company, "2026-10-30T12:00:00", 4)
    assert [s.day for s in slots] == [31, 1, 2, 3]
    assert all(s.hour == 1 for s in slots)
    offset = slots[1].utcoffset()
    assert slots[1].fold == 0 and offset is not None and offset.total_seconds() == -5 * H


def _stored(settings: SyncSettings, version: int = 1) -> StoredSettings:
    return StoredSettings(
        company="acme",
        version=version,
        settings=settings,
        updated_at=datetime.now(UTC),
        updated_by="t",
    )


ACME = Company(id="acme", name="Acme", erp="xero", timezone="UTC", created_at=datetime.now(UTC))


def test_a_change_keeps_the_timing_of_entries_whose_cadence_did_not_change() -> None:
    first = plan_company("acme", ACME, _stored(SyncSettings()), None, T0, H)
    assert {op for op, _, _ in first.ops} == {"set"}
    changed = plan_company(
        "acme",
        ACME,
        _stored(
            SyncSettings(
                payments_for_synced_invoices=PaymentsFrequency.HOURLY, refresh_erp_job_list=False
            ),
            2,
        ),
        first.applied,
        T0 + 10,
        H,
    )
    ops = {entry: op for op, entry, _ in changed.ops}
    assert ops == {
        "acme:vendors": "nx",
        "acme:job_costs": "nx",
        "acme:payments": "set",
        "acme:jobs": "rem",
    }
    assert changed.applied and changed.applied.version == 2


def test_a_deleted_company_loses_its_entries() -> None:
    applied = Applied(version=3, cadences={"vendors": "every:3600"})
    plan = plan_company("acme", None, None, applied, T0, H)
    assert plan.ops == [("rem", "acme:vendors", 0.0)] and plan.applied is None


def test_after_downtime_a_missed_slot_runs_once_not_once_per_period() -> None:
    applied = Applied(version=1, cadences={"vendors": "every:3600"})
    stale = slot_after(Cadence(H), "acme", SyncKind.VENDORS, T0)
    now = stale + 5 * H + 100  # five periods missed
    d = plan_dispatch("acme:vendors", stale, applied, [], now)
    assert d.slot == slot_at_or_before(Cadence(H), "acme", SyncKind.VENDORS, now)
    assert d.slot > now - H and d.next_score is not None and d.next_score > now


def test_a_project_entry_fans_out_to_every_project() -> None:
    applied = Applied(version=1, cadences={"job_costs": "every:7200"})
    d = plan_dispatch("acme:job_costs", T0, applied, ["p2", "p1"], T0)
    assert d.projects == ("p1", "p2")


def test_a_project_id_the_store_would_refuse_gets_no_task_and_the_others_run() -> None:
    applied = Applied(version=1, cadences={"job_costs": "every:7200"})
    d = plan_dispatch("acme:job_costs", T0, applied, ["p1", "bad:id", "", "p 2"], T0)
    assert d.projects == ("p1",)


def test_an_entry_without_a_record_is_removed_and_runs_nothing() -> None:
    d = plan_dispatch("ghost:vendors", T0, None, [], T0)
    assert d.next_score is None
