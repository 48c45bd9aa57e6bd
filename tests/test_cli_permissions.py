"""Permissions that hold: only an admin grants or revokes, the last admin stays, ids are checked.

Through the CLI on fakeredis: every refusal is one line on stderr, a non-zero exit, and nothing
written except (for a permission refusal) one row in the company's security log.
"""

from __future__ import annotations

import json

import pytest
import redis

from config.keys import KeySpace
from erp_sync.control.inputs import os_user
from tests.support.cli import Invoke, invoker
from tests.support.snapshot import snapshot


@pytest.fixture
def run(fake: redis.Redis, env: pytest.MonkeyPatch) -> Invoke:
    return invoker(fake)


@pytest.fixture
def acme(run: Invoke) -> Invoke:
    assert run("company", "add", "acme", "--erp", "xero", "--admin", "alice")[0] == 0
    assert run("user", "grant", "acme", "sam", "--level", "standard", "--as", "alice")[0] == 0
    return run


def test_the_first_admin_comes_with_company_add_and_can_grant(acme: Invoke) -> None:
    code, out, _ = acme("user", "list", "acme", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"user": "alice", "level": "admin"},
        {"user": "sam", "level": "standard"},
    ]
    code, out, _ = acme("user", "list", "acme")
    assert code == 0 and "alice" in out and "standard" in out


def test_a_company_added_without_an_admin_is_warned_about(run: Invoke) -> None:
    code, _, err = run("company", "add", "solo", "--erp", "xero")
    assert code == 0 and "has no admin" in err and "user grant solo" in err


def test_a_company_without_an_admin_gets_its_first_by_an_operator_grant_and_only_then(
    run: Invoke,
) -> None:
    assert run("company", "add", "solo", "--erp", "xero")[0] == 0
    code, _, err = run("user", "grant", "solo", "sam", "--level", "standard", "--as", "sam")
    assert code == 1 and "admin" in err  # only a first admin can be granted this way
    assert run("user", "grant", "solo", "ann", "--level", "admin", "--as", "ann")[0] == 0
    assert json.loads(run("operator-log", "--json")[1])[0]["action"] == "user.grant_first_admin"
    code, _, _ = run("user", "grant", "solo", "eve", "--level", "admin", "--as", "eve")
    assert code == 1  # now an admin exists: the ordinary rule holds
    assert [u["user"] for u in json.loads(run("user", "list", "solo", "--json")[1])] == ["ann"]


def test_grant_and_revoke_are_audited_with_the_os_user(acme: Invoke) -> None:
    assert acme("user", "grant", "acme", "bob", "--level", "admin", "--as", "alice")[0] == 0
    assert acme("user", "revoke", "acme", "sam", "--as", "bob")[0] == 0
    out = acme("audit", "acme", "--json")[1]
    entries = json.loads(out)
    assert [(e["action"], e["actor"], e["new"]) for e in entries[:2]] == [
        ("user.revoke", "bob", {"user": "sam", "level": None}),
        ("user.grant", "alice", {"user": "bob", "level": "admin"}),
    ]
    assert all(e["os_user"] == os_user() for e in entries)
    assert [u["user"] for u in json.loads(acme("user", "list", "acme", "--json")[1])] == [
        "alice",
        "bob",
    ]


def test_company_add_is_in_the_operator_log(acme: Invoke) -> None:
    out = acme("operator-log", "--json")[1]
    [entry] = json.loads(out)
    assert (entry["action"], entry["company"], entry["new"]["admin"], entry["os_user"]) == (
        "company.create",
        "acme",
        "alice",
        os_user(),
    )
    assert "company.create" in acme("operator-log")[1]


def test_the_last_admin_can_be_removed_once_another_admin_exists(acme: Invoke) -> None:
    assert acme("user", "grant", "acme", "bob", "--level", "admin", "--as", "alice")[0] == 0
    assert acme("user", "revoke", "acme", "alice", "--as", "alice")[0] == 0
    code, _, err = acme("user", "grant", "acme", "bob", "--level", "standard", "--as", "bob")
    assert code == 1 and "last admin" in err


LONG = "x" * 5000
BAD = {
    "grant by a non-admin": (
        ["user", "grant", "acme", "sam", "--level", "admin", "--as", "sam"],
        "'standard'",
    ),
    "grant by a stranger": (
        ["user", "grant", "acme", "eve", "--level", "admin", "--as", "eve"],
        "'none'",
    ),
    "revoke by a non-admin": (["user", "revoke", "acme", "alice", "--as", "sam"], "'standard'"),
    "revoke the last admin": (["user", "revoke", "acme", "alice", "--as", "alice"], "last admin"),
    "demote the last admin": (
        ["user", "grant", "acme", "alice", "--level", "read_only", "--as", "alice"],
        "last admin",
    ),
    "revoke a user without a level": (
        ["user", "revoke", "acme", "zed", "--as", "alice"],
        "has no permission",
    ),
    "grant without --as": (["user", "grant", "acme", "bob", "--level", "admin"], "--as"),
    "newline in the granted user": (
        ["user", "grant", "acme", "bob\nalice admin", "--level", "admin", "--as", "alice"],
        "control",
    ),
    "newline in --as": (
        ["settings", "set", "acme", "--as", "alice\nforged", "--no-refresh-jobs"],
        "control",
    ),
    "escape in --as": (
        ["user", "grant", "acme", "bob", "--level", "admin", "--as", "al\x1b[2J"],
        "control",
    ),
    "over-long --as": (
        ["settings", "set", "acme", "--as", LONG, "--no-refresh-jobs"],
        "1-200 characters",
    ),
    "over-long user": (
        ["user", "grant", "acme", LONG, "--level", "admin", "--as", "alice"],
        "1-200 characters",
    ),
    "empty user": (
        ["user", "grant", "acme", "", "--level", "admin", "--as", "alice"],
        "1-200 characters",
    ),
    "padded user": (
        ["user", "grant", "acme", " bob", "--level", "admin", "--as", "alice"],
        "leading or trailing",
    ),
    "localtime": (
        ["company", "add", "x", "--erp", "xero", "--timezone", "localtime"],
        "not an IANA time zone",
    ),
    "legacy alias": (
        ["company", "add", "x", "--erp", "xero", "--timezone", "US/Eastern"],
        "not an IANA time zone",
    ),
    "posix rule": (
        ["company", "add", "x", "--erp", "xero", "--timezone", "EST5EDT"],
        "not an IANA time zone",
    ),
    "over-long time zone": (
        ["company", "add", "x", "--erp", "xero", "--timezone", LONG],
        "5000 characters",
    ),
    "blank name": (["company", "add", "x", "--erp", "xero", "--name", "   "], "empty"),
    "over-long name": (["company", "add", "x", "--erp", "xero", "--name", LONG], "at most 200"),
    "blank project name": (["project", "add", "acme", "p9", "--name", " "], "empty"),
    "company differing only in case": (
        ["company", "add", "ACME", "--erp", "xero"],
        "differ only in case",
    ),
    "bad admin": (["company", "add", "x", "--erp", "xero", "--admin", "a\tb"], "control"),
    "over-long company id": (["company", "add", LONG, "--erp", "xero"], "not a valid id"),
    "over-long unknown company": (["settings", "show", LONG], "unknown company"),
    "over-long erp": (["company", "add", "x", "--erp", LONG], "unknown ERP"),
    "over-long unknown project": (
        ["project", "set", "acme", LONG, "--as", "alice", "--no-sync-job-costs"],
        "unknown project",
    ),
}
SECURITY_LOGGED = {"grant by a non-admin", "grant by a stranger", "revoke by a non-admin"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_non_zero_and_writes_nothing(
    case: str, acme: Invoke, fake: redis.Redis, prefix: str
) -> None:
    args, text = BAD[case]
    before = snapshot(fake, prefix)
    code, out, err = acme(*args)
    assert code != 0 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert text in err
    assert LONG not in err and len(err) < 400  # an over-long value is never echoed in full
    after = snapshot(fake, prefix)
    if case in SECURITY_LOGGED:
        [row] = after.pop(KeySpace(prefix).denied("acme"))
        assert json.loads(row)["action"].endswith(".denied")
    assert after == before


def test_project_ids_differing_only_in_case_are_refused(acme: Invoke) -> None:
    assert acme("project", "add", "acme", "tower")[0] == 0
    code, _, err = acme("project", "add", "acme", "Tower")
    assert code == 1 and "differ only in case" in err


def test_names_are_trimmed(acme: Invoke) -> None:
    assert acme("company", "add", "beta", "--erp", "xero", "--name", "  Beta Co  ")[0] == 0
    [beta] = [c for c in json.loads(acme("company", "list", "--json")[1]) if c["id"] == "beta"]
    assert beta["name"] == "Beta Co"


def test_companies_made_before_the_case_index_still_block_a_case_only_twin(
    run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    assert run("company", "add", "Stone", "--erp", "xero")[0] == 0
    fake.delete(KeySpace(prefix).company_folds)  # as a deployment from before the index
    code, _, err = run("company", "add", "stone", "--erp", "xero")
    assert code == 1 and "differ only in case" in err


def test_a_forged_host_user_cannot_forge_an_audit_row(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "root\nforged row")
    assert os_user().startswith("uid:")
