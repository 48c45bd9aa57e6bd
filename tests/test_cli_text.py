"""The text (non-JSON) output people read: aligned, counted in words, names that match up."""

from __future__ import annotations

import pytest
import redis
from click.testing import CliRunner

from config.keys import KeySpace
from erp_sync.cli import cli
from erp_sync.cli.context import Ctx
from erp_sync.control.store import SettingsStore


def run(client: redis.Redis, *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), obj=Ctx(_client=client))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_schedule_names_each_sync_with_its_setting_and_counts_projects_in_words(
    fake: redis.Redis, keys: KeySpace, store: SettingsStore, env: pytest.MonkeyPatch
) -> None:
    store.add_company("acme", "xero")
    store.add_project("acme", "p1")
    lines = run(fake, "schedule", "acme").splitlines()
    assert lines[1].split() == [
        "SYNC",
        "SETTING",
        "CADENCE",
        "NEXT",
        "RUN",
        "(UTC)",
        "IN",
        "SOURCE",
        "FAN-OUT",
    ]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["job_costs"].split()[1] == "sync_project_job_costs"
    assert rows["payments"].split()[1] == "sync_payments_for_synced_invoices"
    assert rows["job_costs"].endswith("1 project")
    store.add_project("acme", "p2")
    assert run(fake, "schedule", "acme").splitlines()[-1].endswith("2 projects")
    assert rows["vendors"].endswith("computed")  # company-level: no fan-out column text


def test_settings_show_names_the_sync_each_setting_controls(
    fake: redis.Redis, keys: KeySpace, store: SettingsStore, env: pytest.MonkeyPatch
) -> None:
    store.add_company("acme", "xero")
    rows = {
        line.split()[0]: line.split()[1:]
        for line in run(fake, "settings", "show", "acme").splitlines()[2:]
    }
    assert rows["refresh_erp_companies_list"] == ["on", "vendors"]
    assert rows["refresh_erp_job_list"] == ["on", "jobs"]
    assert rows["sync_project_job_costs"] == ["on", "job_costs"]
    assert rows["sync_payments_for_synced_invoices"] == ["on", "payments"]
    assert rows["payments_for_synced_invoices"] == ["daily", "payments", "frequency"]
