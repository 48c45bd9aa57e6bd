"""The stored models and the ERP capability matrix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.models import (
    CAPABILITIES,
    Erp,
    PaymentsFrequency,
    SyncKind,
    SyncSettings,
)


def test_a_new_company_gets_every_supported_sync_on_and_payments_daily() -> None:
    settings = SyncSettings.defaults_for(Erp.XERO)
    assert settings.enabled_kinds() == frozenset(SyncKind)
    assert settings.payments_for_synced_invoices is PaymentsFrequency.DAILY


def test_unsupported_syncs_start_off() -> None:
    assert SyncSettings.defaults_for(Erp.SAGE_100).enabled_kinds() == {
        SyncKind.VENDORS,
        SyncKind.JOBS,
        SyncKind.JOB_COSTS,
    }
    assert SyncSettings.defaults_for(Erp.CMIC).enabled_kinds() == {SyncKind.JOB_COSTS}


def test_the_matrix_covers_every_erp_of_the_design() -> None:
    assert set(CAPABILITIES) == set(Erp)
    no_payments = {e for e, kinds in CAPABILITIES.items() if SyncKind.PAYMENTS not in kinds}
    assert no_payments == {
        Erp.SAGE_100,
        Erp.SAGE_300_CRE,
        Erp.VIEWPOINT_SPECTRUM,
        Erp.CMIC,
        Erp.WORKDAY,
    }


def test_payments_set_to_never_do_not_run_even_when_switched_on() -> None:
    settings = SyncSettings(payments_for_synced_invoices=PaymentsFrequency.NEVER)
    assert SyncKind.PAYMENTS not in settings.enabled_kinds()


@pytest.mark.parametrize("value", ["weekly", "Hourly", "", "every_3_hours"])
def test_only_the_five_payment_frequencies_are_allowed(value: str) -> None:
    with pytest.raises(ValidationError):
        SyncSettings(payments_for_synced_invoices=value)


def test_misspelt_setting_names_are_rejected_not_dropped() -> None:
    with pytest.raises(ValidationError):
        SyncSettings.model_validate({"sync_project_jobcosts": False})
