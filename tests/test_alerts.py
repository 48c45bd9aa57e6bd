"""Failure alerts: the CLI (through CliRunner, on fakeredis), the evaluator's one-alert-per-
incident rules, stale detection, and webhook delivery to a real local HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet

from config.alerts import AlertRule
from config.env import get_settings
from config.keys import KeySpace
from erp_sync.alerts.deliver import SIGNATURE_HEADER, deliver_once, deliveries
from erp_sync.alerts.evaluate import Evaluator, RunOutcome, redis_now
from tests.support.cli import Invoke, invoker
from tests.support.receiver import Receiver, start_receiver
from tests.support.snapshot import snapshot

SECRET = "s3cret-signing-key"


KEY = Fernet.generate_key().decode()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


@pytest.fixture
def run(fake: redis.Redis, env: pytest.MonkeyPatch) -> Invoke:
    env.setenv("ERP_SYNC_SECRET_KEY", KEY)  # signing secrets are stored sealed
    get_settings.cache_clear()
    do = invoker(fake)
    assert do("company", "add", "acme", "--erp", "xero", "--admin", "al")[0] == 0
    assert do("user", "grant", "acme", "sam", "--level", "standard", "--as", "al")[0] == 0
    assert do("project", "add", "acme", "p1")[0] == 0
    return do


def test_a_signing_secret_needs_the_key_and_without_it_nothing_is_written(
    run: Invoke, secret_file: str, fake: redis.Redis, prefix: str, env: pytest.MonkeyPatch
) -> None:
    env.delenv("ERP_SYNC_SECRET_KEY")
    get_settings.cache_clear()
    code, _, err = run(
        "alert",
        "add",
        "acme",
        "--as",
        "al",
        "--url",
        "https://example.com/x",
        "--secret-file",
        secret_file,
    )
    assert code == 1 and "ERP_SYNC_SECRET_KEY is not set" in err
    assert not fake.exists(f"{prefix}:alerts:acme")


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    return str(path)


def ok(run: Invoke, *args: str) -> str:
    code, out, err = run(*args)
    assert code == 0, err
    return out


def added_id(out: str) -> str:
    return out.split("added alert ", 1)[1].split()[0]


def test_alert_add_list_remove_never_show_the_secret_or_a_url_password(
    run: Invoke, secret_file: str, fake: redis.Redis, prefix: str
) -> None:
    out = ok(
        run,
        "alert",
        "add",
        "acme",
        "--as",
        "al",
        "--url",
        "https://hook:pa55word@example.com/x",
        "--events",
        "failed,recovered",
        "--failures",
        "3",
        "--secret-file",
        secret_file,
    )
    alert_id = added_id(out)
    [shown] = json.loads(ok(run, "alert", "list", "acme", "--json"))
    assert shown == {
        **shown,
        "id": alert_id,
        "url": "https://hook:***@example.com/x",
        "events": ["failed", "recovered"],
        "failures": 3,
        "signed": True,
    }
    texts = [
        out,
        ok(run, "alert", "list", "acme"),
        ok(run, "alert", "list", "acme", "--json"),
        ok(run, "audit", "acme", "--json"),
    ]
    assert not [t for t in texts if SECRET in t or "pa55word" in t]
    stored = "".join(str(v) for v in fake.hvals(f"{prefix}:alerts:acme"))
    assert SECRET not in stored and "fernet:" in stored  # sealed at rest
    ok(run, "alert", "remove", "acme", alert_id, "--as", "al")
    assert json.loads(ok(run, "alert", "list", "acme", "--json")) == []
    actions = [e["action"] for e in json.loads(ok(run, "audit", "acme", "--json"))[:2]]
    assert actions == ["alert.remove", "alert.add"]


def test_alert_test_posts_a_signed_test_event_that_verifies(
    run: Invoke, secret_file: str, receiver: Receiver
) -> None:
    alert_id = added_id(
        ok(
            run,
            "alert",
            "add",
            "acme",
            "--as",
            "al",
            "--url",
            receiver.url,
            "--secret-file",
            secret_file,
        )
    )
    assert "delivered test alert" in ok(run, "alert", "test", "acme", alert_id)
    [got] = receiver.got
    expected = "sha256=" + hmac.new(SECRET.encode(), got.raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(got.header(SIGNATURE_HEADER) or "", expected)
    assert got.body["event"] == "test" and got.body["company"] == "acme"
    assert {"company", "kind", "project", "slot", "status", "error", "time", "summary"} <= set(
        got.body
    )
    [logged] = json.loads(ok(run, "alert", "log", "acme", "--json"))
    assert (logged["outcome"], logged["status_code"]) == ("delivered", 200)


def test_alert_test_to_a_failing_receiver_is_one_error_line(
    run: Invoke, receiver: Receiver
) -> None:
    alert_id = added_id(ok(run, "alert", "add", "acme", "--as", "al", "--url", receiver.url))
    receiver.statuses = [500]
    code, _, err = run("alert", "test", "acme", alert_id)
    assert code == 1 and err.count("\n") == 1 and "HTTP 500" in err


BAD = {
    "not a url": (["--url", "example.com/hook"], "not a valid webhook URL"),
    "ftp": (["--url", "ftp://example.com/x"], "not a valid webhook URL"),
    "space": (["--url", "http://exa mple.com/"], "not a valid webhook URL"),
    "bad port": (["--url", "http://example.com:99999/"], "not a valid webhook URL"),
    "too long": (["--url", "http://example.com/" + "a" * 3000], "characters)"),
    "bad event": (
        ["--url", "http://example.com/", "--events", "failed,exploded"],
        "'exploded' is not an event",
    ),
    "no event": (["--url", "http://example.com/", "--events", ","], "nothing is not an event"),
    "zero failures": (["--url", "http://example.com/", "--failures", "0"], "0"),
    "missing secret file": (
        ["--url", "http://example.com/", "--secret-file", "/nonexistent"],
        "cannot read --secret-file",
    ),
    "non-admin": (["--url", "http://example.com/"], "'standard'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_alert_input_is_one_line_and_writes_nothing(
    case: str, run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    extra, text = BAD[case]
    actor = "sam" if case == "non-admin" else "al"
    before = snapshot(fake, prefix)
    code, out, err = run("alert", "add", "acme", "--as", actor, *extra)
    assert code != 0 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert text in err and len(err) < 400
    after = snapshot(fake, prefix)
    after.pop(KeySpace(prefix).denied("acme"), None)
    assert after == before


def test_remove_and_test_of_an_unknown_alert_are_errors(run: Invoke) -> None:
    for args in (
        ["alert", "remove", "acme", "nope", "--as", "al"],
        ["alert", "test", "acme", "nope"],
    ):
        code, _, err = run(*args)
        assert code == 1 and "unknown alert 'nope'" in err


# --- the evaluator ------------------------------------------------------------------------
class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, rule: AlertRule, message: dict[str, Any]) -> None:
        self.sent.append((rule.id, message))

    def events(self) -> list[str]:
        return [str(m["event"]) for _, m in self.sent]


def evaluator(fake: redis.Redis, prefix: str, outbox: Outbox) -> Evaluator:
    return Evaluator(fake, KeySpace(prefix), 3600.0, outbox)


def outcome(status: str, project: str | None = None, kind: str = "vendors") -> RunOutcome:
    return RunOutcome(
        "acme",
        kind,
        project,
        status,
        "ERP said no" if status == "failed" else None,
        "2030-01-01T00:00:00Z",
    )


def test_failures_alert_once_per_incident_and_recovery_alerts_once(
    run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    ok(run, "alert", "add", "acme", "--as", "al", "--url", "http://example.com/")
    outbox = Outbox()
    ev = evaluator(fake, prefix, outbox)
    for status in ("succeeded", "failed", "failed", "failed", "succeeded", "succeeded"):
        ev.on_run(outcome(status))
    assert outbox.events() == ["failed", "recovered"]
    assert outbox.sent[0][1]["error"] == "ERP said no"
    ev.on_run(outcome("failed"))  # a new incident alerts again
    ev.on_run(outcome("failed", project="p1", kind="job_costs"))  # its own incident
    assert outbox.events() == ["failed", "recovered", "failed", "failed"]
    ev.on_run(outcome("skipped"))
    assert len(outbox.sent) == 4


def test_n_consecutive_failures_make_the_incident_when_configured(
    run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    ok(run, "alert", "add", "acme", "--as", "al", "--url", "http://example.com/", "--failures", "3")
    outbox = Outbox()
    ev = evaluator(fake, prefix, outbox)
    for status in ("failed", "failed", "succeeded", "failed", "failed"):
        ev.on_run(outcome(status))
    assert outbox.events() == []  # never three in a row: no incident, no recovery either
    ev.on_run(outcome("failed"))
    ev.on_run(outcome("failed"))
    ev.on_run(outcome("succeeded"))
    assert outbox.events() == ["failed", "recovered"]
    assert "3 times in a row" in outbox.sent[0][1]["summary"]


def test_stale_is_found_from_passed_deadlines_only_and_alerts_once(
    run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    ok(
        run,
        "alert",
        "add",
        "acme",
        "--as",
        "al",
        "--url",
        "http://example.com/",
        "--events",
        "stale,recovered",
    )
    keys = KeySpace(prefix)
    # Seeded at add: one deadline per enabled sync (and project), two periods ahead.
    members = set(fake.zrange(keys.alert_deadlines, 0, -1))
    assert {"acme:vendors:-", "acme:jobs:-", "acme:job_costs:p1", "acme:payments:p1"} == members
    outbox = Outbox()
    ev = evaluator(fake, prefix, outbox)
    now = redis_now(fake)
    assert ev.check_stale(now + 3600) == []  # one period: nothing is stale yet
    hour = 3600
    assert sorted(ev.check_stale(now + 2 * hour + 60)) == ["acme:jobs:-", "acme:vendors:-"]
    assert ev.check_stale(now + 4 * hour + 60) == ["acme:job_costs:p1"]  # every 2 hours
    assert ev.check_stale(now + 48 * hour + 60) == ["acme:payments:p1"]  # daily
    assert ev.check_stale(now + 100 * hour) == []  # each alerted once for its incident
    assert outbox.events() == ["stale"] * 4
    ev.on_run(outcome("succeeded"))  # vendors recovers, once, and is watched again
    ev.on_run(outcome("succeeded"))
    assert outbox.events() == ["stale"] * 4 + ["recovered"]
    assert fake.zscore(keys.alert_deadlines, "acme:vendors:-") is not None
    assert ev.check_stale(now + hour) == []


def test_a_paused_or_switched_off_sync_is_not_stale(
    run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    ok(run, "alert", "add", "acme", "--as", "al", "--url", "http://example.com/")
    ok(run, "pause", "acme", "--as", "al")
    ok(run, "settings", "set", "acme", "--as", "al", "--no-refresh-jobs", "--no-wait")
    outbox = Outbox()
    ev = evaluator(fake, prefix, outbox)
    assert ev.check_stale(redis_now(fake) + 3 * 3600) == []
    keys = KeySpace(prefix)
    assert "acme:jobs:-" not in set(fake.zrange(keys.alert_deadlines, 0, -1))  # forgotten
    assert "acme:vendors:-" in set(fake.zrange(keys.alert_deadlines, 0, -1))  # pushed on
    ok(run, "resume", "acme", "--as", "al")
    assert "acme:vendors:-" in ev.check_stale(redis_now(fake) + 30 * 3600)


def test_an_unreachable_receiver_is_logged_retrying_then_failed(
    run: Invoke, fake: redis.Redis, prefix: str, receiver: Receiver
) -> None:
    alert_id = added_id(ok(run, "alert", "add", "acme", "--as", "al", "--url", receiver.url))
    keys = KeySpace(prefix)
    port = receiver.server.server_address[1]
    receiver.close()  # nothing listens there any more
    message = {"event": "failed", "delivery": "d1", "company": "acme"}
    assert deliver_once(fake, keys, "acme", alert_id, message, 1, False, 1.0) == "retrying"
    assert deliver_once(fake, keys, "acme", alert_id, message, 2, True, 1.0) == "failed"
    log = deliveries(fake, keys, "acme")
    assert [(e.attempt, e.outcome) for e in log] == [(2, "failed"), (1, "retrying")]
    assert log[0].error and "Connection refused" in log[0].error and str(port) not in "x"


@pytest.mark.integration
def test_a_delivery_that_outlives_its_company_writes_no_log_for_the_id(
    real: redis.Redis, prefix: str, receiver: Receiver, env: pytest.MonkeyPatch
) -> None:
    """A retry queued before ``company remove`` runs after it: it is dropped, and the delivery
    log the removal deleted is not created again for a company added later under the id."""
    run = invoker(real)
    assert run("company", "add", "acme", "--erp", "xero", "--admin", "al")[0] == 0
    alert_id = added_id(ok(run, "alert", "add", "acme", "--as", "al", "--url", receiver.url))
    keys = KeySpace(prefix)
    message = {"event": "failed", "delivery": "d1", "company": "acme"}
    assert deliver_once(real, keys, "acme", alert_id, message, 1, False, 1.0) == "delivered"
    assert real.exists(keys.alert_log("acme"))
    assert run("company", "remove", "acme", "--as", "al", "--yes")[0] == 0
    assert not real.exists(keys.alert_log("acme"))
    assert deliver_once(real, keys, "acme", alert_id, message, 2, False, 1.0) == "dropped"
    assert not real.exists(keys.alert_log("acme"))
    assert len(receiver.got) == 1
