"""Lifecycle, per-project job costs and pause/resume through the CLI (fakeredis): what each
command shows, what it audits, and that bad input writes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from config.keys import KeySpace
from erp_sync.infra.publish import Publisher
from tests.support.cli import Invoke, invoker
from tests.support.snapshot import snapshot


class Sent:
    """A publisher that keeps what sync-now would queue."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, dict[str, Any]]] = []

    def send(self, name: str, kwargs: dict[str, Any], task_id: str, queue: str) -> None:
        self.tasks.append((name, kwargs))

    def close(self) -> None:
        pass


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def run(fake: redis.Redis, env: pytest.MonkeyPatch, sent: Sent) -> Invoke:
    publisher: Publisher = sent
    do = invoker(fake, publisher)
    assert do("company", "add", "acme", "--erp", "xero", "--admin", "al")[0] == 0
    assert do("user", "grant", "acme", "sam", "--level", "standard", "--as", "al")[0] == 0
    for p in ("p1", "p2"):
        assert do("project", "add", "acme", p)[0] == 0
    return do


def ok(run: Invoke, *args: str) -> str:
    code, out, err = run(*args)
    assert code == 0, err
    return out


def test_company_set_renames_and_re_zones_and_audits(run: Invoke) -> None:
    assert "Acme Builders" in ok(
        run,
        "company",
        "set",
        "acme",
        "--as",
        "al",
        "--name",
        " Acme Builders ",
        "--timezone",
        "America/Chicago",
    )
    [acme] = json.loads(ok(run, "company", "list", "--json"))
    assert (acme["name"], acme["timezone"]) == ("Acme Builders", "America/Chicago")
    [entry] = json.loads(ok(run, "audit", "acme", "--json", "--limit", "1"))
    assert entry["action"] == "company.update"
    assert entry["old"] == {"name": "acme", "timezone": "UTC"}


def test_company_remove_keeps_audit_and_allows_the_id_again(run: Invoke) -> None:
    assert "removed company acme" in ok(run, "company", "remove", "acme", "--as", "al", "--yes")
    assert json.loads(ok(run, "company", "list", "--json")) == []
    assert (
        json.loads(ok(run, "audit", "acme", "--json", "--limit", "1"))[0]["action"]
        == "company.remove"
    )
    assert "company.remove" in ok(run, "operator-log")
    ok(run, "company", "add", "acme", "--erp", "sage_100", "--admin", "bo")
    assert json.loads(ok(run, "user", "list", "acme", "--json")) == [
        {"user": "bo", "level": "admin"}
    ]  # the old users went with the old company


def test_a_removed_companys_history_audit_and_security_log_stay_readable(run: Invoke) -> None:
    assert run("settings", "set", "acme", "--as", "sam", "--no-refresh-jobs")[0] == 1  # refused
    ok(run, "company", "remove", "acme", "--as", "al", "--yes")
    for args in (("history", "acme"), ("audit", "acme"), ("audit", "acme", "--denied")):
        code, out, err = run(*args, "--json")
        assert code == 0, (args, err)
        assert err.startswith("note: company 'acme' was removed at ") and "by al" in err, err
        assert isinstance(json.loads(out), list)
    denied = json.loads(run("audit", "acme", "--denied", "--json")[1])
    assert [e["action"] for e in denied] == ["settings.denied"]
    code, _, err = run("history", "never-was")
    assert code == 1 and "unknown company" in err
    ok(run, "company", "add", "acme", "--erp", "xero", "--admin", "bo")
    assert run("history", "acme")[2] == ""  # added again: no longer a removed company


def test_company_remove_asks_first(run: Invoke) -> None:
    code, _, err = run("company", "remove", "acme", "--as", "al")
    assert code == 1 and "aborted" in err
    assert json.loads(ok(run, "company", "list", "--json"))[0]["id"] == "acme"


def test_project_opt_out_shows_in_project_list_and_schedule(run: Invoke) -> None:
    assert "job costs off" in ok(
        run, "project", "set", "acme", "p2", "--as", "al", "--no-sync-job-costs"
    )
    assert "off (opted out)" in ok(run, "project", "list", "acme")
    listed = json.loads(ok(run, "project", "list", "acme", "--json"))
    assert [p["sync_job_costs"] for p in listed] == [True, False]
    entries = {e["kind"]: e for e in json.loads(ok(run, "schedule", "acme", "--json"))["entries"]}
    assert entries["job_costs"]["projects"] == ["p1"]
    assert entries["job_costs"]["opted_out"] == ["p2"]
    assert entries["payments"]["projects"] == ["p1", "p2"]
    assert "1 opted out: p2" in ok(run, "schedule", "acme")
    [entry] = json.loads(ok(run, "audit", "acme", "--json", "--limit", "1"))
    assert (entry["action"], entry["new"]) == (
        "project.update",
        {"project": "p2", "sync_job_costs": False},
    )


def test_sync_now_leaves_opted_out_projects_out_of_job_costs(run: Invoke, sent: Sent) -> None:
    ok(run, "project", "set", "acme", "p2", "--as", "al", "--no-sync-job-costs")
    ok(run, "sync-now", "acme", "job_costs", "--as", "sam")
    assert [kwargs["project"] for _, kwargs in sent.tasks] == ["p1"]
    code, _, err = run("sync-now", "acme", "job_costs", "--as", "sam", "--project", "p2")
    assert code == 1 and "opted out of job-cost syncing" in err and len(sent.tasks) == 1
    ok(run, "sync-now", "acme", "payments", "--as", "sam")  # payments still cover both
    assert [kwargs["project"] for _, kwargs in sent.tasks[1:]] == ["p1", "p2"]


def test_project_remove(run: Invoke) -> None:
    ok(run, "project", "remove", "acme", "p2", "--as", "al")
    assert [p["id"] for p in json.loads(ok(run, "project", "list", "acme", "--json"))] == ["p1"]


def test_pause_shows_in_schedule_and_status_and_resume_ends_it(run: Invoke) -> None:
    assert "paused acme" in ok(
        run, "pause", "acme", "--as", "al", "--reason", "ERP upgrade", "--until", "2h"
    )
    shown = json.loads(ok(run, "schedule", "acme", "--json"))["paused"]
    assert shown["company"]["by"] == "al" and shown["company"]["reason"] == "ERP upgrade"
    assert shown["company"]["until"] is not None and shown["fleet"] is None
    assert "PAUSED (this company): by al" in ok(run, "schedule", "acme")
    status = json.loads(ok(run, "status", "--json"))
    assert status["paused"]["acme"]["reason"] == "ERP upgrade"
    assert "PAUSED acme: by al" in ok(run, "status")
    assert "resumed acme" in ok(run, "resume", "acme", "--as", "al")
    assert json.loads(ok(run, "status", "--json"))["paused"] == {}


def test_fleet_pause_is_an_operator_action_in_the_operator_log(run: Invoke) -> None:
    ok(run, "pause", "--all", "--reason", "maintenance night", "--until", "1d")
    assert "PAUSED the whole fleet" in ok(run, "status")
    assert (
        json.loads(ok(run, "schedule", "acme", "--json"))["paused"]["fleet"]["reason"]
        == "maintenance night"
    )
    ok(run, "resume", "--all")
    actions = [e["action"] for e in json.loads(ok(run, "operator-log", "--json"))]
    assert actions[:2] == ["fleet.resume", "fleet.pause"]


def test_sync_now_on_a_paused_company_needs_force_by_an_admin(run: Invoke, sent: Sent) -> None:
    ok(run, "pause", "acme", "--as", "al")
    code, _, err = run("sync-now", "acme", "vendors", "--as", "al")
    assert code == 1 and "is paused" in err and "--force" in err and sent.tasks == []
    code, _, err = run("sync-now", "acme", "vendors", "--as", "sam", "--force")
    assert code == 1 and "'admin' is required" in err and sent.tasks == []
    before = json.loads(ok(run, "audit", "acme", "--json"))
    code, _, err = run("sync-now", "acme", "job_costs", "--as", "al", "--force", "--project", "p9")
    assert code == 1 and "unknown project" in err  # bad input: not even the force is audited
    assert json.loads(ok(run, "audit", "acme", "--json")) == before
    ok(run, "sync-now", "acme", "vendors", "--as", "al", "--force")
    assert [name for name, _ in sent.tasks] == ["tasks.company.refresh_vendors"]
    assert (
        json.loads(ok(run, "audit", "acme", "--json", "--limit", "1"))[0]["action"] == "sync.force"
    )


BAD = {
    "company set by a non-admin": (
        ["company", "set", "acme", "--as", "sam", "--name", "X"],
        "'standard'",
    ),
    "company set nothing": (["company", "set", "acme", "--as", "al"], "nothing to change"),
    "company set bad zone": (
        ["company", "set", "acme", "--as", "al", "--timezone", "localtime"],
        "not an IANA time zone",
    ),
    "company set blank name": (["company", "set", "acme", "--as", "al", "--name", " "], "empty"),
    "company remove by a non-admin": (
        ["company", "remove", "acme", "--as", "sam", "--yes"],
        "'standard'",
    ),
    "company remove unknown": (
        ["company", "remove", "nope", "--as", "al", "--yes"],
        "unknown company",
    ),
    "project set by a non-admin": (
        ["project", "set", "acme", "p1", "--as", "sam", "--no-sync-job-costs"],
        "'standard'",
    ),
    "project set unknown": (
        ["project", "set", "acme", "p9", "--as", "al", "--no-sync-job-costs"],
        "unknown project",
    ),
    "project set nothing": (["project", "set", "acme", "p1", "--as", "al"], "nothing to change"),
    "project remove unknown": (
        ["project", "remove", "acme", "p9", "--as", "al"],
        "unknown project",
    ),
    "pause by a non-admin": (["pause", "acme", "--as", "sam"], "'standard'"),
    "pause without --as": (["pause", "acme"], "--as"),
    "pause both forms": (["pause", "acme", "--all", "--as", "al"], "either COMPANY"),
    "fleet pause without reason": (["pause", "--all"], "--reason"),
    "pause until the past": (
        ["pause", "acme", "--as", "al", "--until", "2001-01-01T00:00:00"],
        "in the future",
    ),
    "pause until nonsense": (
        ["pause", "acme", "--as", "al", "--until", "soon"],
        "neither a duration",
    ),
    "pause until too far": (["pause", "acme", "--as", "al", "--until", "900d"], "a year"),
    "resume not paused": (["resume", "acme", "--as", "al"], "is not paused"),
    "resume fleet not paused": (["resume", "--all"], "is not paused"),
    "pause unknown company": (["pause", "nope", "--as", "al"], "unknown company"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_non_zero_and_writes_nothing(
    case: str, run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    args, text = BAD[case]
    before = snapshot(fake, prefix)
    code, out, err = run(*args)
    assert code != 0 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert text in err
    after = snapshot(fake, prefix)
    after.pop(KeySpace(prefix).denied("acme"), None)  # refusals may be security-logged
    assert after == before


def test_metrics_show_who_paused_what_until_when(run: Invoke) -> None:
    ok(run, "pause", "acme", "--as", "al", "--until", "1h")
    ok(run, "pause", "--all", "--reason", "incident")
    text = ok(run, "metrics")
    lines = [line for line in text.splitlines() if line.startswith("erp_sync_paused{")]
    assert len(lines) == 2
    assert any(
        'company="acme"' in line and 'by="al"' in line and 'until="20' in line for line in lines
    )
    assert any('company="*"' in line and 'by="operator"' in line for line in lines)
    assert "erp_sync_paused_slots_total 0.0" in text
