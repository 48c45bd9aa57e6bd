"""The outbound policy (erp_sync/infra/egress): every spelling of an internal target is refused
when a URL is written, a name that resolves inside is refused on the address connected to, and
one attempt is bounded as a whole. Traffic goes only to loopback servers these tests run; a
refusal of any other internal address is checked without sending anything."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import httpcore
import httpx
import pytest

from config.env import get_settings
from erp_sync.errors import ConfigError, InvalidInput
from erp_sync.infra import egress
from erp_sync.infra.egress import transport
from erp_sync.infra.egress.policy import Policy, Refused, parse_address
from tests.support.egress import INTERNAL, PUBLIC, url_of
from tests.support.procs import wait_until
from tests.support.receiver import Receiver, start_raw, start_receiver, trickle


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host}: a literal or loopback name needs no lookup")


@pytest.mark.parametrize("host", INTERNAL)
def test_every_spelling_of_an_internal_host_is_refused_without_a_lookup(host: str) -> None:
    with pytest.raises(Refused, match=r"internal address|loopback name"):
        Policy().check_host(host, 80, no_dns)
    with pytest.raises(InvalidInput, match=r"^--url refused: .*ERP_SYNC_OUTBOUND_ALLOW$"):
        egress.check_target(url_of(host), "--url", Policy(), no_dns)


@pytest.mark.parametrize("host", PUBLIC)
def test_public_addresses_pass(host: str) -> None:
    Policy().check_host(host, 443, no_dns)


def test_the_spellings_are_read_as_browsers_and_inet_aton_read_them() -> None:
    for spelling in ("2130706433", "0x7f000001", "127.1", "0177.0.0.1", "127.0.0.1.", "0x7f.1"):
        assert str(parse_address(spelling)) == "127.0.0.1"
        assert socket.inet_aton(spelling.rstrip(".")) == socket.inet_aton("127.0.0.1")
    for name in ("example.com", "1.2.3.4.5", "08.0.0.1", "0x1g", "256.1.1.1.", "1_0.0.0.1"):
        assert parse_address(name) is None


def test_a_name_resolving_inside_is_refused_one_not_resolving_is_left_to_connect() -> None:
    inside = Policy()
    with pytest.raises(Refused, match=r"resolves to an internal address \(private\)") as raised:
        inside.check_host("hooks.example.com", 443, lambda h, p: ["93.184.216.34", "10.0.0.5"])
    assert "10.0.0.5" not in str(raised.value)  # no map of internal names for whoever asks

    def unknown(host: str, port: int) -> list[str]:
        raise socket.gaierror(-2, "Name or service not known")

    inside.check_host("not-yet.example.com", 443, unknown)  # judged again at connect time
    # /etc/hosts names that point at loopback (a machine's own name: 127.0.1.1) are resolved too
    with pytest.raises(Refused, match=r"resolves to an internal address \(loopback\)"):
        inside.check_host("builder-7", 80, lambda h, p: ["127.0.1.1"])


def test_the_allow_list_names_hosts_addresses_and_ranges() -> None:
    policy = Policy.parse(" erp.internal , 127.0.0.1, 10.1.0.0/16 ,[::1], ")
    policy.check_host("127.0.0.1", 80, no_dns)
    policy.check_host("2130706433", 80, no_dns)  # the same address in another spelling
    policy.check_host("::ffff:127.0.0.1", 80, no_dns)
    policy.check_host("[::1]".strip("[]"), 80, no_dns)
    policy.check_host("10.1.200.3", 80, no_dns)
    policy.check_host("ERP.internal.", 80, lambda h, p: ["10.9.9.9"])  # named: allowed
    policy.check_host("localhost", 80, no_dns)  # a loopback name, and loopback is allowed
    for refused in ("127.0.0.2", "10.2.0.1", "169.254.169.254", "::ffff:0:a02:1"):
        with pytest.raises(Refused):
            policy.check_host(refused, 80, no_dns)
    with pytest.raises(Refused, match="loopback name"):
        Policy().check_host("localhost", 80, no_dns)
    with pytest.raises(ConfigError, match="ERP_SYNC_OUTBOUND_ALLOW"):
        Policy.parse("10.0.0.0/33")


def test_the_default_setting_allows_nothing_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERP_SYNC_OUTBOUND_ALLOW")
    get_settings.cache_clear()
    assert Policy.from_settings() == Policy()
    with pytest.raises(InvalidInput, match=r"127\.0\.0\.1 is an internal address"):
        egress.check_target("http://127.0.0.1:8080/hook", "--url")


ERP_BAD = {
    "credentials": ("http://u:pw@erp.example.com", "must not contain a user name or password"),
    "user only": ("https://u@erp.example.com/api", "must not contain a user name or password"),
    "trailing ?": ("https://erp.example.com/v3?", "must not have a query or fragment"),
    "trailing #": ("https://erp.example.com/v3#", "must not have a query or fragment"),
    "query": ("https://erp.example.com/v3?x=/other", "must not have a query or fragment"),
    "ftp": ("ftp://erp.example.com", "must be an http(s) URL"),
    "no host": ("http:///path", "must be an http(s) URL"),
    "metadata": ("http://169.254.169.254/latest", "refused: 169.254.169.254 is an internal"),
    "decimal loopback": ("http://2130706433:9/", "refused: 2130706433 is an internal"),
    "ipv6 loopback": ("http://[::1]:9/", "refused: ::1 is an internal"),
}


@pytest.mark.parametrize("case", sorted(ERP_BAD))
def test_erp_urls_refuse_credentials_queries_and_internal_targets(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ERP_SYNC_OUTBOUND_ALLOW")
    get_settings.cache_clear()
    value, text = ERP_BAD[case]
    with pytest.raises(InvalidInput) as raised:
        egress.erp_url(value, "--base-url")
    message = str(raised.value)
    assert message.startswith("--base-url ") and text in message and "\n" not in message
    assert ":pw@" not in message


def test_a_good_erp_url_is_kept_without_its_trailing_slash() -> None:
    assert egress.erp_url("https://quickbooks.api.intuit.com/", "--base-url") == (
        "https://quickbooks.api.intuit.com"
    )
    assert egress.erp_url("http://127.0.0.1:8000/v3/", "--base-url") == "http://127.0.0.1:8000/v3"


# --- the client, on real loopback servers ------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


LOOPBACK = Policy.parse("127.0.0.1")


def test_the_client_refuses_loopback_by_default_before_connecting(receiver: Receiver) -> None:
    with egress.client(2.0, policy=Policy()) as http, pytest.raises(httpx.ConnectError) as raised:
        http.post(receiver.url, content=b"{}")
    assert "refused: 127.0.0.1 is an internal address (loopback)" in str(raised.value)
    assert receiver.connections == 0 and receiver.got == []
    with egress.client(2.0, policy=LOOPBACK) as http:  # the operator's opt-in
        assert http.post(receiver.url, content=b"{}").status_code == 200


def test_a_name_resolving_to_loopback_is_refused_at_connect_time(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "resolve", lambda host, port, timeout: ["127.0.0.1"])
    url = receiver.url.replace("127.0.0.1", "hooks.example.com")
    with egress.client(2.0, policy=Policy()) as http, pytest.raises(httpx.ConnectError) as raised:
        http.post(url, content=b"{}")
    assert "hooks.example.com resolves to an internal address" in str(raised.value)
    assert receiver.connections == 0
    named = Policy.parse("hooks.example.com")  # allowed by name: connects
    with egress.client(2.0, policy=named) as http:
        assert http.post(url, content=b"{}").status_code == 200


def test_the_peer_actually_connected_to_is_checked(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver says public, the connection lands on loopback (NAT, interception, a lying
    resolver): the socket's peer is refused and nothing is sent."""
    monkeypatch.setattr(transport, "resolve", lambda host, port, timeout: ["93.184.216.34"])
    real = httpcore.SyncBackend.connect_tcp
    port = receiver.server.server_address[1]

    def diverted(self: httpcore.SyncBackend, host: str, _port: int, *a: object) -> object:
        assert host == "93.184.216.34"  # what the policy allowed; we never go there
        return real(self, "127.0.0.1", port, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", diverted)
    with egress.client(2.0, policy=Policy()) as http, pytest.raises(httpx.ConnectError) as raised:
        http.post(f"http://hooks.example.com:{port}/hook", content=b"{}")
    assert "connected to 127.0.0.1, an internal address (loopback)" in str(raised.value)
    time.sleep(0.2)  # time for the receiver to have read a request, had one been sent
    assert receiver.got == []


def test_redirects_are_never_followed(receiver: Receiver) -> None:
    other = start_receiver()
    try:
        receiver.statuses, receiver.location = [302], other.url
        with egress.client(2.0, policy=LOOPBACK) as http:
            answer = http.post(receiver.url, content=b"{}")
        assert answer.status_code == 302 and other.connections == 0
    finally:
        other.close()


def test_one_attempt_is_bounded_as_a_whole_against_a_trickling_server() -> None:
    server = start_raw(trickle(0.2, 100))  # 20 s of body, each byte well inside the timeout
    try:
        started = time.monotonic()
        with egress.client(1.0, policy=LOOPBACK) as http, pytest.raises(httpx.ReadTimeout):
            http.post(server.url, content=b"{}")
        took = time.monotonic() - started
        # generous: the bound is 1 s, the trickle 20 s; the server sees the client hang up
        assert took < 10, took
        wait_until(lambda: server.hung_up == [True], 15, f"server saw {server.hung_up}")
    finally:
        server.close()


def test_more_than_100_header_lines_is_a_protocol_error() -> None:
    head = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    server = start_raw(
        lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 0\r\n\r\n")
    )
    try:
        with (
            egress.client(2.0, policy=LOOPBACK) as http,
            pytest.raises(httpx.RemoteProtocolError, match="more than 100 header lines"),
        ):
            http.post(server.url, content=b"{}")
    finally:
        server.close()


def test_httpx_request_logs_mask_url_secrets(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = receiver.url.replace("/hook", "/services/T000/B000/XXXXSECRET") + "?token=TOPSECRET"
    with caplog.at_level(logging.INFO, logger="httpx"), egress.client(2.0, policy=LOOPBACK) as h:
        h.post(url, content=b"{}")
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines and all("SECRET" not in line for line in lines), lines
    assert "/services/***" in lines[0]


def test_the_watchdog_ends_a_blocked_read_at_its_deadline() -> None:
    """What bounds a read that TLS would keep feeding: the socket is shut down at the deadline
    (here a read with no timeout at all, which would otherwise block forever)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(None)
        started = time.monotonic()
        transport.watchdog().arm(started + 0.3, ours)
        assert ours.recv(10) == b""  # ended by the shutdown, not by data
        assert time.monotonic() - started >= 0.3
