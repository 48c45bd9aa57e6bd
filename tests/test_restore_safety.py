"""``restore-from-db`` on a real redis-server never puts back something older than what Redis
holds, never gives a connection generation out twice, and brings back the keys a partly lost
company is missing.

- A Redis rebuilt after a loss takes its revisions from its own clock; when that clock is behind
  the lost server's, a company made again before the restore had a lower revision than the
  database's copy of the old one, and the restore replaced it. Changes after the restore were
  below the copy's revisions too, so the copy refused them.
- The generation counter was raised only to the copy's highest generation, which is behind what
  was issued before the loss: a rotation after the restore got a number a refresh in flight
  before the loss held, and that refresh passed the compare-and-set.
- A company whose record and revision survived was kept whole, its lost users or connection hash
  never restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from config.keys import KeySpace
from config.models import AuditEntry
from erp_sync.cli.restore_cmd import copy_changed
from erp_sync.control.connections import ConnectionStore, Secrets
from erp_sync.control.permissions import Permissions
from erp_sync.control.store import SettingsStore
from erp_sync.control.vault import Vault, new_key
from erp_sync.db import Database
from erp_sync.db.config_copy import ConfigCopy
from erp_sync.errors import ConcurrentUpdate
from tests.support.cli import Invoke, invoker
from tests.support.connection import store_connection
from tests.support.redisproc import RedisServer

pytestmark = pytest.mark.integration
AHEAD = 10**12  # µs: the lost server's clock was this far ahead of the new one (11.6 days)


@pytest.fixture
def lone(own_redis: RedisServer, env: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    env.setenv("ERP_SYNC_REDIS_URL", own_redis.url)
    yield own_redis.client()


@pytest.fixture
def run(lone: redis.Redis) -> Invoke:
    return invoker(lone)


def _rev(client: redis.Redis, keys: KeySpace, scope: str) -> int:
    return int(client.hget(keys.config_revs, scope) or 0)


def _from_a_clock_ahead(client: redis.Redis, keys: KeySpace, *scopes: str) -> None:
    """Revisions as a lost server whose clock was ahead of this one left them."""
    for scope in scopes:
        client.hset(keys.config_revs, scope, _rev(client, keys, scope) + AHEAD)


def test_a_company_made_again_after_the_loss_is_kept_and_its_copy_taken_from_redis(
    lone: redis.Redis, keys: KeySpace, db: Database, run: Invoke
) -> None:
    store = SettingsStore(lone, keys)
    store.add_company("acme", "xero", admin="al")
    store.add_company("stone", "xero", admin="bo")
    _from_a_clock_ahead(lone, keys, "acme", "stone")
    Permissions(store).grant("acme", "cy", "standard", "al")  # copied at a revision from ahead
    Permissions(store).grant("stone", "dee", "standard", "bo")
    copy_changed(lone, keys, db)
    copied = ConfigCopy(db).get("acme")
    assert copied is not None and copied.rev > AHEAD
    lone.flushall()
    store.add_company("acme", "xero", admin="zed")  # made again before anyone restores

    code, out, err = run("restore-from-db", "--yes")
    assert code == 0, err
    assert set(lone.hgetall(keys.users("acme"))) == {"zed"}  # kept: newer than the copy's
    assert "--force" in out
    again = ConfigCopy(db).get("acme")
    assert again is not None and again.users == {"zed": "admin"}  # the copy follows Redis
    assert set(lone.hgetall(keys.users("stone"))) == {"bo", "dee"}  # restored
    assert _rev(lone, keys, "stone") > copied.rev  # above every revision of the copy
    Permissions(store).grant("stone", "eve", "read_only", "bo")  # a change after the restore
    copy_changed(lone, keys, db)
    stone = ConfigCopy(db).get("stone")
    assert stone is not None and "eve" in stone.users  # the copy takes it
    code, out, _ = run("restore-from-db", "--yes")
    assert code == 0 and "nothing to restore" in out


def test_restore_with_force_replaces_a_company_redis_holds_at_an_older_revision(
    lone: redis.Redis, keys: KeySpace, db: Database, run: Invoke
) -> None:
    store = SettingsStore(lone, keys)
    store.add_company("acme", "xero", admin="al")
    _from_a_clock_ahead(lone, keys, "acme")
    Permissions(store).grant("acme", "cy", "standard", "al")
    copy_changed(lone, keys, db)
    lone.flushall()
    store.add_company("acme", "xero", admin="zed")
    code, _out, err = run("restore-from-db", "--yes", "--force")
    assert code == 0, err
    assert set(lone.hgetall(keys.users("acme"))) == {"al", "cy"}


def _connection(client: redis.Redis, keys: KeySpace, vault: Vault) -> ConnectionStore:
    secrets = Secrets(client_secret="cs", refresh_token="rt-1")
    return store_connection(client, keys, vault, actor="al", secrets=secrets)


def test_no_generation_issued_before_the_loss_is_given_again_after_the_restore(
    lone: redis.Redis, keys: KeySpace, db: Database, run: Invoke
) -> None:
    SettingsStore(lone, keys).add_company("qbo", "quickbooks_online", admin="al")
    conns = _connection(lone, keys, Vault([new_key()]))
    copied = conns.secrets("qbo")[1]
    copy_changed(lone, keys, db)  # the copy holds this generation
    in_flight = conns.rotate_refresh_token("qbo", copied, "rt-2", datetime.now(UTC))
    lone.flushall()  # lost before the next copy: the copy is one generation behind
    code, _out, err = run("restore-from-db", "--yes")
    assert code == 0, err
    assert conns.secrets("qbo")[1] == copied
    after = conns.rotate_refresh_token("qbo", copied, "rt-3", datetime.now(UTC))
    assert after > in_flight
    with pytest.raises(ConcurrentUpdate):  # the refresh in flight before the loss fails
        conns.rotate_refresh_token("qbo", in_flight, "rt-stale", datetime.now(UTC))
    assert conns.secrets("qbo")[0].refresh_token == "rt-3"


def test_a_company_whose_record_survived_gets_its_lost_keys_back(
    lone: redis.Redis, keys: KeySpace, db: Database, run: Invoke
) -> None:
    store = SettingsStore(lone, keys)
    store.add_company("qbo", "quickbooks_online", admin="al")
    Permissions(store).grant("qbo", "cy", "standard", "al")
    _connection(lone, keys, Vault([new_key()]))
    store.add_company("kept", "xero", admin="bo")
    copy_changed(lone, keys, db)
    before = (lone.hgetall(keys.users("qbo")), lone.hgetall(keys.connection("qbo")))
    lone.delete(keys.users("qbo"), keys.connection("qbo"))  # partly lost: record and rev stay
    code, out, err = run("restore-from-db", "--yes")
    assert code == 0, err
    assert (lone.hgetall(keys.users("qbo")), lone.hgetall(keys.connection("qbo"))) == before
    assert "users" in out and "connection" in out


def test_a_key_gone_since_the_copy_by_a_newer_change_is_not_brought_back(
    lone: redis.Redis, keys: KeySpace, db: Database, run: Invoke
) -> None:
    store = SettingsStore(lone, keys)
    store.add_company("qbo", "quickbooks_online", admin="al")
    conns = _connection(lone, keys, Vault([new_key()]))
    copy_changed(lone, keys, db)
    conns.delete("qbo", AuditEntry(at=datetime.now(UTC), actor="al", action="x", company="qbo"))
    code, out, err = run("restore-from-db", "--yes")
    assert code == 0, err
    assert not lone.exists(keys.connection("qbo")) and "nothing to restore" in out


def test_a_company_removed_after_the_copy_is_not_brought_back(
    lone: redis.Redis, keys: KeySpace, db: Database, run: Invoke
) -> None:
    from erp_sync.control.lifecycle import Lifecycle

    store = SettingsStore(lone, keys)
    store.add_company("acme", "xero", admin="al")
    copy_changed(lone, keys, db)
    Lifecycle(store).remove_company("acme", "al")  # not copied yet: the copy still has it
    code, out, err = run("restore-from-db", "--yes")
    assert code == 0, err
    assert not lone.exists(keys.company("acme")) and "removed in Redis" in out


def test_a_change_the_copy_refuses_as_older_after_a_loss_stays_marked_and_is_reported(
    lone: redis.Redis, keys: KeySpace, db: Database, run: Invoke
) -> None:
    """Before the restore, a change on the rebuilt Redis (its clock behind) is older than the
    copy's revision: the copy cannot take it, and says so instead of dropping the mark."""
    store = SettingsStore(lone, keys)
    store.add_company("acme", "xero", admin="al")
    _from_a_clock_ahead(lone, keys, "acme")
    Permissions(store).grant("acme", "cy", "standard", "al")
    copy_changed(lone, keys, db)
    lone.flushall()
    store.add_company("acme", "xero", admin="zed")
    done = copy_changed(lone, keys, db)
    assert done.error is not None and "acme" in done.error and "restore-from-db" in done.error
    assert lone.hexists(keys.config_dirty, "acme")  # left marked: nothing is lost meanwhile
    assert run("restore-from-db", "--yes")[0] == 0
    copied = ConfigCopy(db).get("acme")
    assert copied is not None and copied.users == {"zed": "admin"}
    assert not lone.hexists(keys.config_dirty, "acme")
