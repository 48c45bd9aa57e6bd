"""``connection rotate-key`` re-encrypts everything sealed with ``ERP_SYNC_SECRET_KEY`` (one
inventory: ``erp_sync.control.sealed``), as the README's steps rotate it, on a real redis-server
with real ``manage.py`` processes: a new key first, ``rotate-key``, the old key dropped. Then a
signed webhook to a real loopback receiver still verifies, the ERP credentials still open, the
counts of each kind are reported, and the rotation is in the operator log.

Before the inventory, rotate-key re-encrypted the ERP credentials only: after the same steps
every signed webhook failed (its secret could no longer be opened).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from config.alerts import AlertEvent, AlertRule
from config.keys import KeySpace
from config.models import parse
from erp_sync.cli.restore_cmd import copy_changed
from erp_sync.control.connections import ConnectionStore, Secrets
from erp_sync.control.sealed import SEALED, SealedSecrets, open_secret
from erp_sync.control.store import SettingsStore
from erp_sync.control.vault import Vault, new_key
from erp_sync.db import Database
from erp_sync.db.config_copy import ConfigCopy
from erp_sync.errors import CorruptRecord
from tests.support.connection import store_connection
from tests.support.manage import manage
from tests.support.receiver import Receiver, start_receiver
from tests.support.redisproc import RedisServer

pytestmark = pytest.mark.integration

SIGNING_SECRET = "whsec-rotation-test-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = start_receiver()
    yield made
    made.close()


def _connect_directly(client: redis.Redis, keys: KeySpace, key: str) -> None:
    """A QuickBooks Online connection stored as ``connect`` stores it (no ERP is called)."""
    secrets = Secrets(client_secret="cs-rotation", refresh_token="rt-rotation")
    store_connection(client, keys, Vault([key]), actor="alice", secrets=secrets)
    client.set(keys.access_token("qbo"), Vault([key]).seal({"access_token": "at-1"}), px=600_000)


def test_after_the_readmes_rotation_steps_a_signed_webhook_still_verifies(
    real: redis.Redis,
    keys: KeySpace,
    redis_server: RedisServer,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    old = new_key()
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": keys.prefix,
        "ERP_SYNC_SECRET_KEY": old,
    }

    def ok(*args: str) -> str:
        done = manage(env, *args)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    ok("company", "add", "acme", "--erp", "xero", "--admin", "alice")
    ok("company", "add", "qbo", "--erp", "quickbooks_online", "--admin", "alice")
    _connect_directly(real, keys, old)
    (tmp_path / "secret").write_text(SIGNING_SECRET + "\n")
    added = ok(
        "alert", "add", "acme", "--as", "alice", "--url", receiver.url,
        "--secret-file", str(tmp_path / "secret"),
    )  # fmt: skip
    alert_id = added.split()[2]
    assert json.loads(ok("alert", "list", "acme", "--json"))[0]["signed"] is True

    # The README's steps: a new key first (it encrypts, both decrypt), rotate, drop the old.
    new = ok("connection", "new-key").strip()
    env["ERP_SYNC_SECRET_KEY"] = f"{new},{old}"
    out = ok("connection", "rotate-key")
    assert "re-encrypted 1 connection(s), 1 alert signing secret(s)" in out
    assert "1 cached access token(s)" in out
    env["ERP_SYNC_SECRET_KEY"] = new

    assert ok("alert", "test", "acme", alert_id).startswith("delivered test alert")
    (got,) = receiver.got
    expected = "sha256=" + hmac.new(SIGNING_SECRET.encode(), got.raw, hashlib.sha256).hexdigest()
    assert got.header("X-ERP-Sync-Signature") == expected
    assert got.body["event"] == "test"

    secrets, _ = ConnectionStore(real, keys, Vault([new])).secrets("qbo")
    assert (secrets.client_secret, secrets.refresh_token) == ("cs-rotation", "rt-rotation")
    sealed = str(real.hget(keys.connection("qbo"), "secret"))
    with pytest.raises(CorruptRecord):
        Vault([old]).open(sealed, "secret")  # the old key alone reads nothing any more
    assert Vault([new]).open(str(real.get(keys.access_token("qbo"))), "t")["access_token"] == "at-1"
    assert 0 < int(real.pttl(keys.access_token("qbo"))) <= 600_000  # its expiry kept

    (row,) = [
        e
        for e in json.loads(ok("operator-log", "--json"))
        if e["action"] == "connection.rotate_key"
    ]
    assert row["new"] == {"connections": 1, "alert_secrets": 1, "access_tokens": 1}
    assert row["company"] == "*" and row["os_user"]


def test_a_secret_no_key_can_open_is_named_and_the_rest_still_rotates(
    real: redis.Redis, keys: KeySpace, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A secret sealed with a key already dropped cannot be re-encrypted: rotate-key says which
    (exit 1, so the operator does not drop the old key now), after re-encrypting the others."""
    lost, old, new = new_key(), new_key(), new_key()
    store = SettingsStore(real, keys)
    store.add_company("qbo", "quickbooks_online", admin="alice")
    store.add_company("lost", "quickbooks_online", admin="alice")
    _connect_directly(real, keys, old)
    real.hset(keys.connection("lost"), "secret", Vault([lost]).seal({"x": "y"}))
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": keys.prefix,
        "ERP_SYNC_SECRET_KEY": f"{new},{old}",
    }
    done = manage(env, "connection", "rotate-key")
    assert done.returncode == 1 and done.stdout.startswith("re-encrypted 1 connection(s)")
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "the connection of 'lost'" in done.stderr and "keep the old key" in done.stderr
    ConnectionStore(real, keys, Vault([new])).secrets("qbo")  # rotated all the same


def test_rotate_key_seals_a_signing_secret_stored_before_secrets_were_sealed(
    real: redis.Redis, keys: KeySpace
) -> None:
    store = SettingsStore(real, keys)
    store.add_company("acme", "xero", admin="alice")
    rule = AlertRule(
        id="old1",
        company="acme",
        url="https://hooks.example.com/x",
        events=[AlertEvent.FAILED],
        secret="plain-old-secret",
        created_by="alice",
        created_at=datetime.now(UTC),
    )
    real.hset(keys.alerts("acme"), rule.id, rule.model_dump_json())
    key = new_key()
    done = SealedSecrets(store, Vault([key])).rotate()
    assert done.counts["alert_secrets"] == 1 and not done.unreadable
    stored = parse(AlertRule, str(real.hget(keys.alerts("acme"), "old1")), "rule")
    assert stored.secret is not None and stored.secret.startswith(SEALED)
    assert "plain-old-secret" not in str(real.hget(keys.alerts("acme"), "old1"))
    assert open_secret(stored.secret, Vault([key])) == "plain-old-secret"
    assert stored.model_copy(update={"secret": None}) == rule.model_copy(update={"secret": None})


def _rotation_env(redis_server: RedisServer, keys: KeySpace, key_list: str) -> dict[str, str]:
    return {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": keys.prefix,
        "ERP_SYNC_SECRET_KEY": key_list,
    }


def test_rotate_key_says_the_old_key_can_go_only_once_the_database_copy_has_the_new_seals(
    real: redis.Redis, keys: KeySpace, redis_server: RedisServer, db: Database
) -> None:
    old, new = new_key(), new_key()
    SettingsStore(real, keys).add_company("qbo", "quickbooks_online", admin="alice")
    _connect_directly(real, keys, old)
    copy_changed(real, keys, db)  # the copy holds the connection sealed with the old key
    done = manage(_rotation_env(redis_server, keys, f"{new},{old}"), "connection", "rotate-key")
    assert done.returncode == 0, done.stderr
    assert "the older keys can now be removed" in done.stdout and not done.stderr
    copied = ConfigCopy(db).get("qbo")
    assert copied is not None
    Vault([new]).open(copied.connection["secret"], "the copy's secret")  # the new key alone


def test_rotate_key_whose_database_copy_fails_says_keep_the_old_key_and_exits_non_zero(
    real: redis.Redis, keys: KeySpace, redis_server: RedisServer, db: Database
) -> None:
    """A restore from a copy that still holds secrets sealed with the dropped key would bring
    back secrets no key opens: the operator must not drop it until the copy has the new seals."""
    old, new = new_key(), new_key()
    SettingsStore(real, keys).add_company("qbo", "quickbooks_online", admin="alice")
    _connect_directly(real, keys, old)
    copy_changed(real, keys, db)
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE config_copy RENAME TO config_copy_away"))
    try:
        done = manage(_rotation_env(redis_server, keys, f"{new},{old}"), "connection", "rotate-key")
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE config_copy_away RENAME TO config_copy"))
    assert done.returncode == 1
    assert done.stdout.startswith("re-encrypted 1 connection(s)")
    assert "can now be removed" not in done.stdout
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "keep the old key" in done.stderr and "database" in done.stderr
    copied = ConfigCopy(db).get("qbo")
    assert copied is not None
    with pytest.raises(CorruptRecord):  # what a restore would bring back needs the old key
        Vault([new]).open(copied.connection["secret"], "the copy's secret")
