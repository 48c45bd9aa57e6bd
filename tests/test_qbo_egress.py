"""The QuickBooks Online connector's HTTP client is the egress client: an internal base or token
URL is refused on the address it connects to unless the operator allows it, and no redirect is
followed. The only traffic is to a loopback receiver this test runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config.env import get_settings
from erp_sync.connectors.qbo import http
from erp_sync.errors import PermanentConnectorError
from tests.support.receiver import Receiver, start_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


def test_the_connector_refuses_loopback_unless_the_operator_allows_it(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ERP_SYNC_OUTBOUND_ALLOW")
    get_settings.cache_clear()
    # Permanent: the operator's policy refused it, and a retry would only be refused again.
    with pytest.raises(
        PermanentConnectorError, match=r"refused: 127\.0\.0\.1 is an internal address"
    ):
        http.request("POST", receiver.url, content=b"{}")
    assert receiver.connections == 0
    monkeypatch.setenv("ERP_SYNC_OUTBOUND_ALLOW", "127.0.0.1")
    get_settings.cache_clear()
    assert http.request("POST", receiver.url, content=b"{}").status_code == 200


def test_the_connector_follows_no_redirect(receiver: Receiver) -> None:
    other = start_receiver()
    try:
        receiver.statuses, receiver.location = [307], other.url
        assert http.request("POST", receiver.url, content=b"{}").status_code == 307
        assert other.connections == 0
    finally:
        other.close()
