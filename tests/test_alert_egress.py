"""Webhooks cannot be aimed inside, cannot be redirected, cannot hold an attempt and cannot crash
one: ``alert add`` refuses internal targets in every spelling (nothing written, nothing sent),
delivery refuses a name that resolves inside on the address connected to, a 3xx is a failed
attempt, a trickling receiver is cut at the timeout, invalid HTTP is one logged error, and an
attempt that cannot even be signed is logged. Real receivers on loopback only."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from config.env import get_settings
from config.keys import KeySpace
from erp_sync.alerts.deliver import deliver_once, deliveries
from erp_sync.infra import egress
from erp_sync.infra.egress import transport
from tests.support.cli import Invoke, invoker
from tests.support.egress import INTERNAL, url_of
from tests.support.procs import wait_until
from tests.support.receiver import RawServer, Receiver, fixed, start_raw, start_receiver, trickle
from tests.support.snapshot import snapshot

KEY = Fernet.generate_key().decode()
MESSAGE = {"event": "failed", "delivery": "d1", "company": "acme"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


@pytest.fixture
def run(fake: redis.Redis, env: pytest.MonkeyPatch) -> Invoke:
    env.setenv("ERP_SYNC_SECRET_KEY", KEY)
    get_settings.cache_clear()
    do = invoker(fake)
    assert do("company", "add", "acme", "--erp", "xero", "--admin", "al")[0] == 0
    return do


@pytest.fixture
def default_policy(env: pytest.MonkeyPatch) -> None:
    """The operator allows nothing internal (the default)."""
    env.delenv("ERP_SYNC_OUTBOUND_ALLOW")
    get_settings.cache_clear()


def add(run: Invoke, url: str, *extra: str) -> str:
    code, out, err = run("alert", "add", "acme", "--as", "al", "--url", url, *extra)
    assert code == 0, err
    return out.split("added alert ", 1)[1].split()[0]


def last(fake: redis.Redis, prefix: str) -> tuple[str, int | None, str]:
    entry = deliveries(fake, KeySpace(prefix), "acme", 1)[0]
    return entry.outcome, entry.status_code, entry.error or ""


@pytest.mark.parametrize("host", INTERNAL)
def test_alert_add_refuses_every_spelling_of_an_internal_target_and_writes_nothing(
    host: str, run: Invoke, default_policy: None, fake: redis.Redis, prefix: str
) -> None:
    before = snapshot(fake, prefix)
    code, out, err = run("alert", "add", "acme", "--as", "al", "--url", url_of(host))
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: --url refused: ") and "ERP_SYNC_OUTBOUND_ALLOW" in err
    assert snapshot(fake, prefix) == before


def test_the_operator_allow_list_lets_loopback_rules_be_written(
    run: Invoke, receiver: Receiver
) -> None:
    add(run, receiver.url)  # the suite's ERP_SYNC_OUTBOUND_ALLOW names 127.0.0.1


def test_a_name_that_resolves_inside_is_refused_at_delivery_on_the_connected_address(
    run: Invoke,
    default_policy: None,
    receiver: Receiver,
    fake: redis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Written while the name did not resolve; by delivery it resolves to loopback (DNS
    rebinding): refused before connecting, logged, the receiver never sees a connection."""
    url = receiver.url.replace("127.0.0.1", "hooks.example.com")

    def not_yet(host: str, port: int, timeout: float = 5.0) -> list[str]:
        raise socket.gaierror(-2, "Name or service not known")  # no real DNS query

    monkeypatch.setattr(egress.policy, "resolve", not_yet)
    alert_id = add(run, url)
    monkeypatch.setattr(transport, "resolve", lambda host, port, timeout: ["127.0.0.1"])
    keys = KeySpace(prefix)
    assert deliver_once(fake, keys, "acme", alert_id, MESSAGE, 1, False, 2.0) == "retrying"
    _, code, error = last(fake, prefix)
    assert code is None and "resolves to an internal address (loopback)" in error
    assert receiver.connections == 0 and receiver.got == []


def test_a_rule_to_loopback_is_refused_at_delivery_once_the_operator_withdraws_it(
    run: Invoke, receiver: Receiver, fake: redis.Redis, prefix: str, env: pytest.MonkeyPatch
) -> None:
    alert_id = add(run, receiver.url)
    env.delenv("ERP_SYNC_OUTBOUND_ALLOW")
    get_settings.cache_clear()
    assert deliver_once(fake, KeySpace(prefix), "acme", alert_id, MESSAGE, 1, True, 2.0) == "failed"
    assert "refused: 127.0.0.1 is an internal address (loopback)" in last(fake, prefix)[2]
    assert receiver.connections == 0


def test_a_redirect_to_another_origin_is_a_failed_attempt_and_is_not_followed(
    run: Invoke, receiver: Receiver, fake: redis.Redis, prefix: str
) -> None:
    other = start_receiver()
    try:
        receiver.statuses, receiver.location = [302], other.url
        alert_id = add(run, receiver.url.replace("http://", "http://hook:pa55word@"))
        assert (
            deliver_once(fake, KeySpace(prefix), "acme", alert_id, MESSAGE, 1, True, 2.0)
            == "failed"
        )
        assert last(fake, prefix) == ("failed", 302, "HTTP 302: redirects are not followed")
        assert len(receiver.got) == 1 and other.connections == 0 and other.got == []
    finally:
        other.close()


def test_a_trickling_receiver_cannot_hold_an_attempt_beyond_its_timeout(
    run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    server = start_raw(trickle(0.2, 100))  # 20 s of answer, a byte every 0.2 s
    try:
        alert_id = add(run, server.url)
        assert (
            deliver_once(fake, KeySpace(prefix), "acme", alert_id, MESSAGE, 1, True, 1.0)
            == "failed"
        )
        assert last(fake, prefix) == ("failed", None, "timed out: no complete answer within 1s")
        # the client hung up long before the answer was done (a generous bound, not a wall time)
        wait_until(lambda: server.hung_up == [True], 15, f"receiver saw {server.hung_up}")
    finally:
        server.close()


HEAD = b"HTTP/1.1 200 OK\r\n"
INVALID = {
    "garbage status line": b"SMTP ready, go ahead\r\n\r\n",
    "101 headers": HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
    "70 KB header line": HEAD + b"X-Long: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
    "closed half-way": HEAD + b"Content-Length: 50\r\n\r\nshort",
}


@pytest.fixture(params=sorted(INVALID))
def invalid(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    server = start_raw(fixed(INVALID[request.param]))
    yield server
    server.close()


def test_invalid_http_from_a_receiver_is_a_logged_failed_attempt(
    invalid: RawServer, run: Invoke, fake: redis.Redis, prefix: str
) -> None:
    alert_id = add(run, invalid.url.replace("http://", "http://hook:pa55word@"))
    keys = KeySpace(prefix)
    assert deliver_once(fake, keys, "acme", alert_id, MESSAGE, 1, False, 2.0) == "retrying"
    _, code, error = last(fake, prefix)
    assert code is None and error.startswith("RemoteProtocolError: ") and "\n" not in error
    assert "pa55word" not in error
    code_, out, err = run("alert", "test", "acme", alert_id)
    assert code_ == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: test delivery to alert {alert_id} failed: RemoteProtocol")


def test_an_attempt_that_cannot_be_signed_is_logged(
    run: Invoke, receiver: Receiver, fake: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("whsec-1")
    alert_id = add(run, receiver.url, "--secret-file", str(secret))
    run_env = pytest.MonkeyPatch()
    run_env.setenv("ERP_SYNC_SECRET_KEY", Fernet.generate_key().decode())  # not the sealing key
    get_settings.cache_clear()
    try:
        keys = KeySpace(prefix)
        assert deliver_once(fake, keys, "acme", alert_id, MESSAGE, 1, False, 2.0) == "retrying"
        assert deliver_once(fake, keys, "acme", alert_id, MESSAGE, 2, True, 2.0) == "failed"
        log = deliveries(fake, keys, "acme")
        assert [(e.attempt, e.outcome) for e in log] == [(2, "failed"), (1, "retrying")]
        assert log[0].error and log[0].error.startswith("not sent: the alert could not be signed")
        code, _, err = run("alert", "test", "acme", alert_id)
        assert code == 1 and err.count("\n") == 1 and "could not be signed" in err
        assert receiver.got == []
    finally:
        run_env.undo()
        get_settings.cache_clear()


def test_a_webhook_url_with_its_secret_in_the_path_is_masked_in_lists_and_audit(
    run: Invoke, default_policy: None
) -> None:
    slack = "https://hooks.slack.com/services/T000/B000/XXXX"
    code, out, err = run("alert", "add", "acme", "--as", "al", "--url", slack)
    assert code == 0, err
    code2, out2, _ = run("alert", "add", "acme", "--as", "al", "--url", "https://e.com/h?k=v1")
    assert code2 == 0
    texts = [
        out,
        out2,
        run("alert", "list", "acme")[1],
        run("alert", "list", "acme", "--json")[1],
        run("audit", "acme", "--json")[1],
    ]
    assert not [t for t in texts if "T000" in t or "XXXX" in t or "v1" in t], texts
    shown = [r["url"] for r in json.loads(texts[3])]
    assert shown == ["https://hooks.slack.com/services/***", "https://e.com/h?***"]


def test_the_default_policy_cannot_be_bypassed_through_the_host_name_of_this_machine(
    run: Invoke, default_policy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine's own name resolves to loopback through /etc/hosts (Debian: 127.0.1.1), and
    ``localhost`` is loopback by definition, whatever a resolver says."""
    hosts = {"builder-7": ["127.0.1.1"], "localhost": ["93.184.216.34"]}
    monkeypatch.setattr(egress.policy, "resolve", lambda host, port, timeout=5.0: hosts[host])
    for name in hosts:
        code, _, err = run("alert", "add", "acme", "--as", "al", "--url", f"http://{name}:80/")
        assert code == 1 and "refused" in err, err


def test_a_non_admin_learns_nothing_of_internal_names_and_is_logged(
    run: Invoke,
    default_policy: None,
    fake: redis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``alert add`` resolves the URL's host to refuse internal targets: a user who is not an
    admin is refused before that (so ``--as`` cannot be used to map the internal network), with
    a security-log row; an admin is told a name is internal, never which address it has."""
    asked: list[str] = []

    def internal(host: str, port: int, timeout: float = 5.0) -> list[str]:
        asked.append(host)
        return ["10.20.30.40"]

    monkeypatch.setattr(egress.policy, "resolve", internal)
    code, _, err = run("alert", "add", "acme", "--as", "eve", "--url", "http://vault.corp/x")
    assert code == 1 and "eve" in err and "internal" not in err and asked == []
    denied = fake.lrange(KeySpace(prefix).denied("acme"), 0, -1)
    assert len(denied) == 1 and json.loads(denied[0])["action"] == "alert.add.denied"
    code, _, err = run("alert", "add", "acme", "--as", "al", "--url", "http://vault.corp/x")
    assert code == 1 and "resolves to an internal address (private)" in err
    assert "10.20.30.40" not in err and asked == ["vault.corp"]
