"""The management command through click's CliRunner (fakeredis) and one bad-input table."""

from __future__ import annotations

import json

import pytest
import redis
from click.testing import CliRunner

from config.keys import KeySpace
from erp_sync.cli import cli
from tests.support.cli import Invoke, invoker
from tests.support.snapshot import snapshot


@pytest.fixture
def run(fake: redis.Redis, env: pytest.MonkeyPatch) -> Invoke:
    return invoker(fake)


@pytest.fixture
def seeded(run: Invoke) -> Invoke:
    assert (
        run(
            "company",
            "add",
            "acme",
            "--erp",
            "xero",
            "--timezone",
            "Europe/London",
            "--admin",
            "alice",
        )[0]
        == 0
    )
    assert run("company", "add", "stone", "--erp", "sage_100", "--admin", "alice")[0] == 0
    assert run("project", "add", "acme", "p1", "--name", "Tower")[0] == 0
    assert run("user", "grant", "acme", "rita", "--level", "read_only", "--as", "alice")[0] == 0
    return run


def test_settings_show_json_has_the_fixed_shape(seeded: Invoke) -> None:
    code, out, _ = seeded("settings", "show", "acme", "--json")
    assert code == 0
    assert json.loads(out) == {
        "company": "acme",
        "erp": "xero",
        "version": 1,
        "settings": {
            "payments_for_synced_invoices": "daily",
            "sync_project_job_costs": True,
            "refresh_erp_companies_list": True,
            "refresh_erp_job_list": True,
            "sync_payments_for_synced_invoices": True,
        },
        "not_supported": [],
    }


def test_settings_show_marks_what_the_erp_does_not_support(seeded: Invoke) -> None:
    code, out, _ = seeded("settings", "show", "stone", "--json")
    assert code == 0
    assert json.loads(out)["not_supported"] == [
        "payments_for_synced_invoices",
        "sync_payments_for_synced_invoices",
    ]
    code, out, _ = seeded("settings", "show", "stone")
    rows = [line for line in out.splitlines() if "payments" in line]
    assert len(rows) == 2 and all("not supported by sage_100" in r for r in rows)
    assert "not supported" not in seeded("settings", "show", "acme")[1]


def test_settings_set_prints_the_new_settings(seeded: Invoke) -> None:
    code, out, _ = seeded(
        "settings",
        "set",
        "acme",
        "--as",
        "alice",
        "--payments-frequency",
        "every_4_hours",
        "--no-refresh-jobs",
        "--no-wait",
        "--json",
    )
    assert code == 0
    shown = json.loads(out)
    assert shown["version"] == 2
    assert shown["settings"]["payments_for_synced_invoices"] == "every_4_hours"
    assert shown["settings"]["refresh_erp_job_list"] is False
    code, out, _ = seeded("audit", "acme", "--json")
    assert json.loads(out)[0]["new"] == {
        "payments_for_synced_invoices": "every_4_hours",
        "refresh_erp_job_list": False,
    }


def test_lists_are_readable_and_json(seeded: Invoke) -> None:
    code, out, _ = seeded("company", "list")
    assert code == 0 and "acme" in out and "Europe/London" in out
    code, out, _ = seeded("project", "list", "acme", "--json")
    assert [p["name"] for p in json.loads(out)] == ["Tower"]
    code, out, _ = seeded("settings", "show", "stone")
    assert "sync_payments_for_synced_invoices" in out and "off" in out


BAD_COMMANDS = {
    "unknown company": (
        ["settings", "set", "nope", "--as", "alice", "--no-refresh-jobs"],
        "unknown company 'nope'",
    ),
    "unknown erp": (["company", "add", "x", "--erp", "oracle"], "unknown ERP 'oracle'"),
    "duplicate company": (["company", "add", "acme", "--erp", "xero"], "already exists"),
    "bad timezone": (
        ["company", "add", "x", "--erp", "xero", "--timezone", "Nowhere/Land"],
        "not an IANA time zone",
    ),
    "bad frequency": (
        ["settings", "set", "acme", "--as", "alice", "--payments-frequency", "weekly"],
        "'weekly' is not one of",
    ),
    "unsupported setting": (
        ["settings", "set", "stone", "--as", "alice", "--sync-payments"],
        "sage_100 does not support sync_payments_for_synced_invoices",
    ),
    "non-admin": (["settings", "set", "acme", "--as", "rita", "--no-refresh-jobs"], "'read_only'"),
    "unknown user": (["settings", "set", "acme", "--as", "zed", "--no-refresh-jobs"], "'none'"),
    "missing --as": (["settings", "set", "acme", "--no-refresh-jobs"], "--as"),
    "nothing to change": (["settings", "set", "acme", "--as", "alice"], "nothing to change"),
    "bad level": (
        ["user", "grant", "acme", "bob", "--level", "owner", "--as", "alice"],
        "'owner' is not one of",
    ),
    "unknown project company": (["project", "add", "nope", "p1"], "unknown company"),
    "unknown command": (["frobnicate"], "No such command"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_input_gets_one_line_and_a_non_zero_exit_and_writes_nothing(
    case: str, seeded: Invoke, fake: redis.Redis, prefix: str
) -> None:
    args, text = BAD_COMMANDS[case]
    before = snapshot(fake, prefix)
    code, out, err = seeded(*args)
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert text in err
    assert out == ""
    after = snapshot(fake, prefix)
    if case in DENIED:  # refused and audited as refused: only the security log grew
        denied = after.pop(KeySpace(prefix).denied("acme"))
        assert len(denied) == 1 and '"action":"settings.denied"' in denied[0]
    assert after == before


DENIED = {"non-admin", "unknown user"}


def test_audit_denied_lists_refused_changes(seeded: Invoke) -> None:
    assert seeded("settings", "set", "acme", "--as", "rita", "--no-refresh-jobs")[0] == 1
    code, out, _ = seeded("audit", "acme", "--denied", "--json")
    assert code == 0
    [entry] = json.loads(out)
    assert (entry["actor"], entry["action"], entry["new"]) == (
        "rita",
        "settings.denied",
        {"refresh_erp_job_list": False},
    )
    code, out, _ = seeded("audit", "acme", "--denied")
    assert code == 0 and "settings.denied" in out and "rita" in out
    code, out, _ = seeded("audit", "acme", "--json")
    assert "settings.denied" not in out


def test_redis_unreachable_names_the_url_without_the_password(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("ERP_SYNC_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    result = CliRunner().invoke(cli, ["company", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "hunter2" not in result.stderr and result.stderr.count("\n") == 1


def test_keys_live_under_the_prefix(seeded: Invoke, fake: redis.Redis, keys: KeySpace) -> None:
    assert all(isinstance(k, str) and k.startswith(keys.prefix + ":") for k in fake.keys("*"))
