"""The settings store on fakeredis: versioning, audit, change messages, and refusing bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from config.keys import KeySpace
from config.models import PaymentsFrequency, PermissionLevel
from erp_sync.control.store import SettingsStore
from erp_sync.errors import (
    AlreadyExists,
    CorruptRecord,
    ErpSyncError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    UnsupportedSetting,
)
from tests.support.reads import xentries
from tests.support.snapshot import snapshot


@pytest.fixture
def acme(store: SettingsStore) -> SettingsStore:
    store.add_company("acme", "quickbooks_online", name="Acme Builders", timezone="America/Denver")
    store.add_company("stone", "sage_100")
    store.add_project("acme", "p1")
    store.grant("acme", "alice", "admin")
    store.grant("acme", "sam", "standard")
    store.grant("stone", "alice", "admin")
    return store


def test_a_settings_change_bumps_the_version_audits_and_sends_one_message(
    acme: SettingsStore, fake: redis.Redis, keys: KeySpace
) -> None:
    before = acme.sync_settings("acme")
    stored, changed = acme.update_settings(
        "acme", "alice", {"payments_for_synced_invoices": "hourly"}
    )
    assert changed and stored.version == before.version + 1
    assert stored.settings.payments_for_synced_invoices is PaymentsFrequency.HOURLY
    assert acme.sync_settings("acme") == stored
    entry = acme.audit("acme")[0]
    assert (entry.actor, entry.action, entry.version) == ("alice", "settings.update", 2)
    assert entry.old == {"payments_for_synced_invoices": "daily"}
    assert entry.new == {"payments_for_synced_invoices": "hourly"}
    messages = [m for _, m in xentries(fake, keys.changes)]
    assert messages[-1] == {"company": "acme", "version": "2"}


def test_a_change_that_changes_nothing_writes_nothing(
    acme: SettingsStore, fake: redis.Redis, keys: KeySpace
) -> None:
    before = snapshot(fake, keys.prefix)
    stored, changed = acme.update_settings("acme", "alice", {"sync_project_job_costs": True})
    assert not changed and stored.version == 1
    assert snapshot(fake, keys.prefix) == before


def test_turning_off_a_sync_the_erp_lacks_is_a_harmless_no_op(acme: SettingsStore) -> None:
    _, changed = acme.update_settings(
        "stone", "alice", {"sync_payments_for_synced_invoices": False}
    )
    assert not changed


def test_a_mutator_sees_the_current_settings(acme: SettingsStore) -> None:
    for _ in range(3):
        acme.update_settings(
            "acme", "alice", lambda s: {"refresh_erp_job_list": not s.refresh_erp_job_list}
        )
    stored = acme.sync_settings("acme")
    assert stored.version == 4 and stored.settings.refresh_erp_job_list is False


def test_listing_companies_and_projects(acme: SettingsStore) -> None:
    assert [c.id for c in acme.list_companies()] == ["acme", "stone"]
    assert acme.get_company("acme").timezone == "America/Denver"
    assert [p.id for p in acme.list_projects("acme")] == ["p1"]
    assert acme.level_of("acme", "sam") is PermissionLevel.STANDARD
    assert acme.level_of("acme", "nobody") is PermissionLevel.NONE


BAD: dict[str, tuple[type[ErpSyncError], str, Callable[[SettingsStore], object]]] = {
    "unknown company": (
        NotFound,
        "unknown company 'nope'",
        lambda s: s.update_settings("nope", "alice", {"sync_project_job_costs": False}),
    ),
    "unknown erp": (InvalidInput, "unknown ERP 'oracle'", lambda s: s.add_company("x", "oracle")),
    "duplicate company": (
        AlreadyExists,
        "'acme' already exists",
        lambda s: s.add_company("acme", "xero"),
    ),
    "bad timezone": (
        InvalidInput,
        "not an IANA time zone",
        lambda s: s.add_company("x", "xero", timezone="Mars/Olympus"),
    ),
    "bad company id": (InvalidInput, "not a valid id", lambda s: s.add_company("a:b", "xero")),
    "bad frequency": (
        InvalidInput,
        "payments_for_synced_invoices",
        lambda s: s.update_settings("acme", "alice", {"payments_for_synced_invoices": "weekly"}),
    ),
    "unknown setting": (
        InvalidInput,
        "unknown setting 'colour'",
        lambda s: s.update_settings("acme", "alice", {"colour": "red"}),
    ),
    "unsupported toggle": (
        UnsupportedSetting,
        "sage_100 does not support sync_payments_for_synced_invoices",
        lambda s: s.update_settings("stone", "alice", {"sync_payments_for_synced_invoices": True}),
    ),
    "unsupported frequency": (
        UnsupportedSetting,
        "sage_100 does not support payments_for_synced_invoices",
        lambda s: s.update_settings("stone", "alice", {"payments_for_synced_invoices": "hourly"}),
    ),
    "non-admin": (
        PermissionDenied,
        "'standard'",
        lambda s: s.update_settings("acme", "sam", {"sync_project_job_costs": False}),
    ),
    "unknown user": (
        PermissionDenied,
        "'none'",
        lambda s: s.update_settings("acme", "mallory", {"sync_project_job_costs": False}),
    ),
    "bad level": (InvalidInput, "invalid level", lambda s: s.grant("acme", "bob", "owner")),
    "grant on unknown company": (
        NotFound,
        "unknown company",
        lambda s: s.grant("nope", "bob", "admin"),
    ),
    "duplicate project": (
        AlreadyExists,
        "'p1' already exists",
        lambda s: s.add_project("acme", "p1"),
    ),
    "project of unknown company": (
        NotFound,
        "unknown company",
        lambda s: s.add_project("nope", "p9"),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_a_clear_error_and_writes_nothing(
    case: str, acme: SettingsStore, fake: redis.Redis, keys: KeySpace
) -> None:
    error, text, action = BAD[case]
    before = snapshot(fake, keys.prefix)
    with pytest.raises(error, match=text.replace("(", r"\(")):
        action(acme)
    after = snapshot(fake, keys.prefix)
    if error is PermissionDenied:  # refused and audited as refused: only the security log grew
        denied = after.pop(keys.denied("acme"))
        assert len(denied) == 1 and '"action":"settings.denied"' in denied[0]
    assert after == before


def test_a_refused_change_is_logged_with_who_when_and_what_was_asked(
    acme: SettingsStore, fake: redis.Redis, keys: KeySpace
) -> None:
    for _ in range(2):
        with pytest.raises(PermissionDenied):
            acme.update_settings("acme", "sam", {"payments_for_synced_invoices": "hourly"})
    entries = acme.denied("acme")
    assert len(entries) == 2
    assert (entries[0].actor, entries[0].action, entries[0].company) == (
        "sam",
        "settings.denied",
        "acme",
    )
    assert entries[0].new == {"payments_for_synced_invoices": "hourly"}
    assert acme.sync_settings("acme").version == 1
    assert [e.action for e in acme.audit("acme")] == ["user.grant", "user.grant", "company.create"]


def test_corrupt_stored_settings_are_reported_not_crashed_on(
    acme: SettingsStore, fake: redis.Redis, keys: KeySpace
) -> None:
    fake.set(keys.settings("acme"), '{"version": "x"}')
    with pytest.raises(CorruptRecord, match="settings of 'acme' is corrupt"):
        acme.sync_settings("acme")
