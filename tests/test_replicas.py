"""Admin changes wait for a replica's acknowledgement (``WAIT``) on a real primary and replica:
the command returns only once the replica has the change, reports one it did not acknowledge
in time, and on a lone Redis waits for nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from config.models import StoredSettings
from erp_sync.control.replicas import ReplicaAck
from erp_sync.control.store import SettingsStore
from erp_sync.errors import NotReplicated
from tests.support.procs import ROOT, process_env, wait_until
from tests.support.redisproc import RedisServer
from tests.support.replicas import ReplicaSet

pytestmark = [pytest.mark.integration]
SETTINGS_SET = [sys.executable, "manage.py", "settings", "set", "acme", "--as", "al"]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[ReplicaSet]:
    found = ReplicaSet.start(tmp_path)
    yield found
    found.stop()


def _company(client: redis.Redis, keys: KeySpace) -> SettingsStore:
    store = SettingsStore(client, keys, ack=ReplicaAck(1, 5000))
    store.add_company("acme", "xero", admin="al")
    return store


def _settings_set(url: str, prefix: str, timeout_ms: int) -> subprocess.Popen[str]:
    env = {
        "ERP_SYNC_REDIS_URL": url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_REDIS_WAIT_TIMEOUT_MS": str(timeout_ms),
    }
    return subprocess.Popen(
        [*SETTINGS_SET, "--no-refresh-jobs", "--no-wait"],
        cwd=ROOT,
        env=process_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _pause(server: RedisServer, ms: int) -> None:
    """Stop (``ms`` > 0) or resume the replica's applying of its primary's stream (its link
    stays up, so the primary still counts it online)."""
    args = ("CLIENT", "PAUSE", ms, "WRITE") if ms else ("CLIENT", "UNPAUSE")
    server.client().execute_command(*args)  # type: ignore[no-untyped-call]


def _version(client: redis.Redis, keys: KeySpace) -> int:
    raw = client.get(keys.settings("acme"))
    return StoredSettings.model_validate_json(str(raw)).version if raw else 0


def test_settings_set_returns_only_once_the_replica_has_the_change(
    pair: ReplicaSet, prefix: str
) -> None:
    keys = KeySpace(prefix)
    primary = pair.primary.client()
    _company(primary, keys)
    assert pair.replica.proc is not None
    pair.replica.proc.send_signal(signal.SIGSTOP)  # its link stays up; it just does not answer
    try:
        proc = _settings_set(pair.primary.url, prefix, 60_000)
        wait_until(lambda: _version(primary, keys) == 2, 60, "the change never reached Redis")
        time.sleep(0.5)  # time that must pass: a command not waiting would have exited by now
        assert proc.poll() is None, "settings set returned before any replica had the change"
    finally:
        pair.replica.proc.send_signal(signal.SIGCONT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert _version(pair.replica.client(), keys) == 2  # acknowledged: the replica has it


def test_a_change_no_replica_acknowledges_in_time_exits_non_zero_with_one_line(
    pair: ReplicaSet, prefix: str
) -> None:
    keys = KeySpace(prefix)
    primary = pair.primary.client()
    _company(primary, keys)
    # The replica stops applying its primary's stream (its link stays up).
    _pause(pair.replica, 20_000)
    try:
        proc = _settings_set(pair.primary.url, prefix, 300)
        _out, err = proc.communicate(timeout=60)
    finally:
        _pause(pair.replica, 0)
    assert proc.returncode == 1
    assert err.splitlines() == [
        "error: the change is stored on the primary but no replica acknowledged it within "
        "300 ms; it may be lost if the primary fails now"
    ]
    assert _version(primary, keys) == 2  # stored on the primary, as the line says


def test_the_store_reports_what_the_unacknowledged_change_was(
    pair: ReplicaSet, prefix: str
) -> None:
    keys = KeySpace(prefix)
    store = _company(pair.primary.client(), keys)
    store = SettingsStore(store.client, keys, ack=ReplicaAck(1, 200))
    _pause(pair.replica, 20_000)
    try:
        with pytest.raises(NotReplicated) as caught:
            store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    finally:
        _pause(pair.replica, 0)
    result = caught.value.result
    assert isinstance(result, tuple)
    assert result[1] and result[0].version == 2
    assert (caught.value.acked, caught.value.wanted) == (0, 1)


def test_every_kind_of_admin_change_waits_for_the_replica(pair: ReplicaSet, prefix: str) -> None:
    from erp_sync.control.lifecycle import Lifecycle
    from erp_sync.control.pause import Pauses
    from erp_sync.control.permissions import Permissions

    keys = KeySpace(prefix)
    store = _company(pair.primary.client(), keys)
    store = SettingsStore(store.client, keys, ack=ReplicaAck(1, 200))
    actions: dict[str, Callable[[], object]] = {
        "project add": lambda: store.add_project("acme", "p1"),
        "user grant": lambda: Permissions(store).grant("acme", "bo", "standard", "al"),
        "pause": lambda: Pauses(store).pause("acme", "al", reason=None, until=None),
        "fleet pause": lambda: Pauses(store).pause(None, "ops", reason=None, until=None),
        "company set": lambda: Lifecycle(store).set_company("acme", "al", name="Acme Ltd"),
        "company add": lambda: store.add_company("beta", "xero"),
    }
    _pause(pair.replica, 60_000)
    unconfirmed = []
    try:
        for name, action in actions.items():
            try:
                action()
            except NotReplicated:
                unconfirmed.append(name)
    finally:
        _pause(pair.replica, 0)
    assert unconfirmed == list(actions)


def test_on_a_lone_redis_a_change_waits_for_nothing(own_redis: RedisServer, prefix: str) -> None:
    keys = KeySpace(prefix)
    client = own_redis.client()
    store = _company(client, keys)
    client.config_resetstat()
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    stats = client.info("commandstats")
    assert "cmdstat_wait" not in stats
    assert (
        stats.get("cmdstat_info", {"calls": 0})["calls"] <= 1
    )  # the replica count: one round trip at most


def _no_info_user(server: RedisServer) -> redis.Redis:
    """A client of an ACL user allowed everything but ``INFO`` (as a managed Redis or a careful
    operator sets one up): ``INFO`` answers ``NOPERM``."""
    server.client().acl_setuser(
        "app",
        enabled=True,
        passwords=["+pw"],
        keys=["~*"],
        channels=["&*"],
        commands=["+@all", "-info"],
    )
    return server.client(username="app", password="pw")


def _acme(server: RedisServer, keys: KeySpace) -> None:
    """Company ``acme`` (admin ``al``), written by the default user without waiting."""
    SettingsStore(server.client(), keys, ack=ReplicaAck(0)).add_company("acme", "xero", admin="al")


def test_a_user_not_allowed_info_waits_for_the_wanted_replicas_and_reports_too_few(
    own_redis: RedisServer, prefix: str
) -> None:
    keys = KeySpace(prefix)
    _acme(own_redis, keys)
    store = SettingsStore(_no_info_user(own_redis), keys, ack=ReplicaAck(1, 200))
    with pytest.raises(NotReplicated) as caught:  # not "0 replicas": the wait is not skipped
        store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    assert (caught.value.acked, caught.value.wanted) == (0, 1)


def test_a_user_not_allowed_info_has_its_change_acknowledged_by_a_real_replica(
    pair: ReplicaSet, prefix: str
) -> None:
    keys = KeySpace(prefix)
    _acme(pair.primary, keys)
    wait_until(lambda: pair.replica.client().exists(keys.company("acme")) == 1, 20, "no sync")
    store = SettingsStore(_no_info_user(pair.primary), keys, ack=ReplicaAck(1, 5000))
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    assert _version(pair.replica.client(), keys) == 2


def test_what_info_answered_is_read_again_once_the_cache_expires(
    own_redis: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from erp_sync.control import replicas

    monkeypatch.setattr(replicas, "CACHE_SECONDS", 0.0)
    keys = KeySpace(prefix)
    _acme(own_redis, keys)
    client = _no_info_user(own_redis)
    store = SettingsStore(client, keys, ack=ReplicaAck(1, 200))
    with pytest.raises(NotReplicated):
        store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    own_redis.client().acl_setuser("app", commands=["+info"])  # the operator grants INFO
    store.update_settings("acme", "al", {"refresh_erp_companies_list": False})
    assert _version(client, keys) == 3  # counted again: a lone Redis, nothing to wait for


def test_a_renamed_info_counts_as_no_replicas_and_is_asked_again_after_the_cache(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from erp_sync.control import replicas

    server = RedisServer(tmp_path / "r", extra=["--rename-command", "INFO", "INFO_HIDDEN"]).start()
    try:
        keys = KeySpace(prefix)
        client = server.client()
        store = SettingsStore(client, keys, ack=ReplicaAck(1, 60_000))
        store.add_company("acme", "xero", admin="al")  # no INFO, so no replicas: no wait

        def errors() -> int:
            stats = client.execute_command("INFO_HIDDEN", "stats")  # type: ignore[no-untyped-call]
            return int(str(stats).split("total_error_replies:")[1].split()[0])

        before = errors()
        store.update_settings("acme", "al", {"refresh_erp_job_list": False})
        assert errors() == before  # cached: INFO is not asked on every change
        monkeypatch.setattr(replicas, "CACHE_SECONDS", 0.0)
        store.update_settings("acme", "al", {"refresh_erp_companies_list": False})
        assert errors() == before + 1  # the cache expired: asked again
    finally:
        server.close_clients()
        server.kill()
