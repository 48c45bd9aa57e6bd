"""Races on a company's ERP connection, on a real redis-server: generations only ever increase and
every write of a connection is a compare-and-set, so a token refresh that was in flight on an
older connection (reconnected, disconnected, or of a removed company) cannot store its refresh
token beside the new connection's secret, ``connection rotate-key`` cannot put a spent refresh
token back, and a ``mark`` from an older connection does not mark the new one.

Each race is made deterministic by doing the other writer's step at the exact point between the
first writer's read and its write (a vault whose ``rotate`` runs the refresh, for rotate-key).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis

from config.keys import KeySpace
from config.models import AuditEntry, Erp
from erp_sync.control.connections import Connection, ConnectionStore, Secrets
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.store import SettingsStore
from erp_sync.control.vault import Vault, new_key
from erp_sync.errors import ConcurrentUpdate

pytestmark = pytest.mark.integration


def _connect(connections: ConnectionStore, realm: str, secret: str, refresh: str) -> None:
    now = datetime.now(UTC)
    connections.save(
        Connection(
            company="acme",
            erp=Erp.QUICKBOOKS_ONLINE,
            realm_id=realm,
            client_id="app",
            base_url="http://127.0.0.1:1/v3",
            token_url="http://127.0.0.1:1/token",
            connected_by="al",
            connected_at=now,
        ),
        Secrets(client_secret=secret, refresh_token=refresh),
        AuditEntry(at=now, actor="al", action="connection.connect", company="acme"),
    )


@pytest.fixture
def store(real: redis.Redis, keys: KeySpace) -> SettingsStore:
    made = SettingsStore(real, keys)
    made.add_company("acme", "quickbooks_online", admin="al")
    return made


@pytest.fixture
def connections(store: SettingsStore) -> ConnectionStore:
    return ConnectionStore(store.client, store.keys, Vault([new_key()]), store)


def test_a_refresh_in_flight_during_a_reconnect_cannot_store_the_old_realms_token(
    connections: ConnectionStore,
) -> None:
    _connect(connections, "OLD", "old-secret", "old-refresh")
    _, generation = connections.secrets("acme")  # a worker starts refreshing
    _connect(connections, "NEW", "new-secret", "new-refresh")  # the admin reconnects
    _, reconnected = connections.secrets("acme")
    assert reconnected > generation  # never restarted at 1

    with pytest.raises(ConcurrentUpdate):  # the refresh's answer belongs to the old connection
        connections.rotate_refresh_token("acme", generation, "old-rotated", datetime.now(UTC))
    secrets, _ = connections.secrets("acme")
    assert (secrets.client_secret, secrets.refresh_token) == ("new-secret", "new-refresh")
    assert connections.require("acme").realm_id == "NEW"


@pytest.mark.parametrize("gap", ["disconnect", "company remove"])
def test_a_refresh_in_flight_across_a_disconnect_or_a_removal_cannot_store_its_token(
    store: SettingsStore, connections: ConnectionStore, gap: str
) -> None:
    _connect(connections, "OLD", "old-secret", "old-refresh")
    _, generation = connections.secrets("acme")
    entry = AuditEntry(at=datetime.now(UTC), actor="al", action="x", company="acme")
    if gap == "disconnect":
        connections.delete("acme", entry)
    else:  # a new tenant under the same id, connected afresh
        Lifecycle(store).remove_company("acme", "al")
        store.add_company("acme", "quickbooks_online", admin="al")
    _connect(connections, "NEW", "new-secret", "new-refresh")
    assert connections.secrets("acme")[1] > generation

    with pytest.raises(ConcurrentUpdate):
        connections.rotate_refresh_token("acme", generation, "old-rotated", datetime.now(UTC))
    secrets, _ = connections.secrets("acme")
    assert (secrets.client_secret, secrets.refresh_token) == ("new-secret", "new-refresh")


def test_rotations_take_increasing_generations_and_a_second_rotation_from_one_is_refused(
    connections: ConnectionStore,
) -> None:
    _connect(connections, "R", "secret", "rt-1")
    _, first = connections.secrets("acme")
    second = connections.rotate_refresh_token("acme", first, "rt-2", datetime.now(UTC))
    assert second > first and connections.secrets("acme")[1] == second
    with pytest.raises(ConcurrentUpdate):  # a slow worker that refreshed from rt-1 too
        connections.rotate_refresh_token("acme", first, "rt-2b", datetime.now(UTC))
    assert connections.secrets("acme")[0].refresh_token == "rt-2"


class RacingVault(Vault):
    """A vault whose first ``rotate`` lets ``during`` run first: what a refresh landing between
    rotate-key's read of a secret and its write does."""

    def __init__(self, keys: list[str], during: list[object]) -> None:
        super().__init__(keys)
        self.during = during

    def rotate(self, token: str) -> str:
        while self.during:
            step = self.during.pop()
            assert callable(step)
            step()
        return super().rotate(token)


def test_a_refresh_landing_during_rotate_key_is_not_undone(
    store: SettingsStore, real: redis.Redis, keys: KeySpace
) -> None:
    old, new = new_key(), new_key()
    connections = ConnectionStore(real, keys, Vault([old]), store)
    _connect(connections, "R", "secret", "rt-1")
    _, generation = connections.secrets("acme")
    worker = ConnectionStore(real, keys, Vault([new, old]), store)

    def refresh() -> None:
        worker.rotate_refresh_token("acme", generation, "rt-2", datetime.now(UTC))

    rotating = ConnectionStore(real, keys, RacingVault([new, old], [refresh]), store)
    assert rotating.rotate_keys() == 1
    secrets, now = ConnectionStore(real, keys, Vault([new]), store).secrets("acme")
    assert secrets.refresh_token == "rt-2"  # the spent rt-1 was not put back
    assert now > generation


def test_a_mark_from_an_older_connection_does_not_mark_the_new_one(
    connections: ConnectionStore,
) -> None:
    _connect(connections, "OLD", "old-secret", "old-refresh")
    _, generation = connections.secrets("acme")  # a refresh that Intuit will refuse
    _connect(connections, "NEW", "new-secret", "new-refresh")
    assert not connections.mark("acme", "reconnect_required", "refused", generation=generation)
    assert connections.require("acme").status == "connected"

    _, current = connections.secrets("acme")
    assert connections.mark("acme", "reconnect_required", "refused", generation=current)
    assert connections.require("acme").status == "reconnect_required"


def test_an_access_token_fetched_for_an_older_connection_is_not_cached_for_the_new_one(
    real: redis.Redis, keys: KeySpace, connections: ConnectionStore
) -> None:
    _connect(connections, "OLD", "old-secret", "old-refresh")
    _, generation = connections.secrets("acme")  # a refresh whose answer keeps the token
    _connect(connections, "NEW", "new-secret", "new-refresh")
    assert not connections.cache_access_token("acme", generation, "old-access", 60_000)
    assert not real.exists(keys.access_token("acme"))

    _, current = connections.secrets("acme")
    assert connections.cache_access_token("acme", current, "new-access", 60_000)
    sealed = str(real.get(keys.access_token("acme")))
    assert connections.vault.open(sealed, "token")["access_token"] == "new-access"
    assert 0 < int(real.pttl(keys.access_token("acme"))) <= 60_000
