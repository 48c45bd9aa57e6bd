"""The sweep's check of one company against its settings, as pure arithmetic (no Redis)."""

from __future__ import annotations

from datetime import UTC, datetime

from config.members import due_member
from config.models import Company, Erp, StoredSettings, SyncKind, SyncSettings
from erp_sync.beat.repair import Observed, check_company
from erp_sync.schedule.applied import Applied
from erp_sync.schedule.cadence import cadences, slot_after, slot_at_or_before

H = 3600.0
NOW = 1_800_000_000.0
AT = datetime.fromtimestamp(NOW, UTC)
ACME = Company(id="acme", name="Acme", erp=Erp.XERO, timezone="UTC", created_at=AT)
SETTINGS = StoredSettings(
    company="acme", version=3, settings=SyncSettings(), updated_at=AT, updated_by="al"
)
EXPECTED = cadences(SETTINGS.settings, "UTC", H)
APPLIED = Applied(version=3, cadences={k.value: c.key for k, c in EXPECTED.items()})


def healthy_scores() -> dict[SyncKind, float]:
    return {k: slot_after(c, "acme", k, NOW) for k, c in EXPECTED.items()}


def test_a_schedule_that_matches_its_settings_has_no_findings() -> None:
    seen = Observed(applied=APPLIED, scores=healthy_scores())
    finding = check_company("acme", ACME, SETTINGS, seen, NOW, H)
    assert finding.problems == [] and finding.plan is None


def test_a_lost_applied_record_is_rebuilt_and_valid_due_times_are_kept() -> None:
    scores = healthy_scores()
    finding = check_company("acme", ACME, SETTINGS, Observed(scores=scores), NOW, H)
    assert finding.problems == ["beat's applied record is missing"]
    assert finding.plan is not None and finding.plan.applied == APPLIED
    assert sorted(finding.plan.ops) == sorted(
        ("nx", due_member("acme", k), s) for k, s in scores.items()
    )


def test_a_lost_entry_resumes_at_its_current_slot_only_if_that_slot_never_ran() -> None:
    vendors = EXPECTED[SyncKind.VENDORS]
    current = slot_at_or_before(vendors, "acme", SyncKind.VENDORS, NOW)
    scores = healthy_scores()
    del scores[SyncKind.VENDORS]
    not_run = Observed(applied=APPLIED, scores=scores, last_slots={SyncKind.VENDORS: current - H})
    ran = Observed(applied=APPLIED, scores=scores, last_slots={SyncKind.VENDORS: current})
    unknown = Observed(applied=APPLIED, scores=scores)
    for seen, resumes_at in ((not_run, current), (ran, current + H), (unknown, current + H)):
        finding = check_company("acme", ACME, SETTINGS, seen, NOW, H)
        assert finding.problems == ["vendors has no due entry"]
        assert finding.plan is not None
        assert ("set", "acme:vendors", resumes_at) in finding.plan.ops


def test_corrupt_records_invalid_due_times_and_stale_versions_are_named_and_repaired() -> None:
    scores = healthy_scores()
    scores[SyncKind.JOBS] = 12345.678  # not one of the cadence's slots
    scores[SyncKind.VENDORS] = slot_after(
        EXPECTED[SyncKind.VENDORS], "acme", SyncKind.VENDORS, NOW + 100 * H
    )  # far ahead
    stale = Applied(version=2, cadences=APPLIED.cadences)
    finding = check_company("acme", ACME, SETTINGS, Observed(applied=stale, scores=scores), NOW, H)
    assert finding.problems[0] == "applied version 2 is not settings version 3"
    assert "jobs has an invalid due time 12345.678" in finding.problems
    assert any(p.startswith("vendors has an invalid due time") for p in finding.problems)
    corrupt = check_company(
        "acme", ACME, SETTINGS, Observed(applied_corrupt=True, scores=healthy_scores()), NOW, H
    )
    assert corrupt.problems == ["beat's applied record is corrupt"]
    assert corrupt.plan is not None and corrupt.plan.applied == APPLIED


def test_a_switched_off_sync_loses_its_entry_and_a_changed_cadence_restarts_at_its_next_slot() -> (
    None
):
    off = SETTINGS.model_copy(
        update={
            "settings": SyncSettings(
                refresh_erp_job_list=False, payments_for_synced_invoices=("hourly")
            )
        }
    )
    finding = check_company(
        "acme", ACME, off, Observed(applied=APPLIED, scores=healthy_scores()), NOW, H
    )
    assert "jobs has a due entry but is switched off" in finding.problems
    assert "payments runs daily@UTC, settings say every:3600" in finding.problems
    assert finding.plan is not None
    assert ("rem", "acme:jobs", 0.0) in finding.plan.ops
    payments = cadences(off.settings, "UTC", H)[SyncKind.PAYMENTS]
    assert (
        "set",
        "acme:payments",
        slot_after(payments, "acme", SyncKind.PAYMENTS, NOW),
    ) in finding.plan.ops


def test_the_schedule_of_a_company_that_is_gone_is_removed_and_unreadable_settings_are_left() -> (
    None
):
    gone = check_company(
        "acme", None, None, Observed(applied=APPLIED, scores=healthy_scores()), NOW, H
    )
    assert gone.problems == ["the company is gone but its schedule remains"]
    assert gone.plan is not None and gone.plan.applied is None
    assert {op for op, _, _ in gone.plan.ops} == {"rem"}
    assert check_company("acme", None, None, Observed(), NOW, H).problems == []
    unreadable = check_company("acme", ACME, None, Observed(), NOW, H)
    assert unreadable.plan is None and "cannot rebuild" in unreadable.problems[0]
