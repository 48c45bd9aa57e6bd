"""Audit entries beyond the newest ``ERP_SYNC_AUDIT_KEEP`` move from Redis to ``audit_log``: on
both dialects, idempotently, without losing an entry pushed while a list is archived, and read
back seamlessly by ``audit`` and ``operator-log`` (real redis-server: the trim is a Lua script)."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis

from config.env import get_settings
from config.keys import KeySpace
from config.models import AuditEntry
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import AUDIT_CAP
from erp_sync.db import Database
from erp_sync.db.audit import AuditArchive, archive_all, archive_list
from erp_sync.errors import ConfigError, PermissionDenied
from erp_sync.infra import lua
from erp_sync.infra.celery_config import ARCHIVE_AUDIT_TASK, celery_config
from erp_sync.infra.slots import ALERTS_QUEUE
from tests.support.cli import invoker
from tests.support.db import archived_count

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Ticker:
    """A clock one second further on every read (thread-safe): every entry has its own time."""

    def __init__(self) -> None:
        self._n = itertools.count()

    def __call__(self) -> datetime:
        return T0 + timedelta(seconds=next(self._n))


@pytest.fixture
def store(real: redis.Redis, keys: KeySpace) -> SettingsStore:
    store = SettingsStore(real, keys, clock=Ticker(), os_user="ops")
    store.add_company("acme", "viewpoint_vista", admin="alice")
    return store


def grants(store: SettingsStore, n: int, company: str = "acme", start: int = 0) -> None:
    for i in range(start, start + n):
        store.grant(company, f"user{i}", "read_only", actor="alice")


def refusals(store: SettingsStore, n: int) -> None:
    for i in range(n):
        with pytest.raises(PermissionDenied):
            store.update_settings("acme", f"intruder{i}", {"refresh_erp_job_list": False})


def whole(store: SettingsStore, archive: AuditArchive, kind: str = "audit") -> list[AuditEntry]:
    if kind == "operator":
        return archive.extend("operator", None, store.operator_log(10_000), 10_000)[0]
    recent = (store.denied if kind == "denied" else store.audit)("acme", 10_000)
    return archive.extend("denied" if kind == "denied" else "audit", "acme", recent, 10_000)[0]


def test_entries_beyond_the_keep_move_to_the_database_and_read_back_in_order(
    store: SettingsStore, any_db: Database
) -> None:
    grants(store, 449)
    refusals(store, 60)
    before = {
        kind: store.audit("acme", 10_000) if kind == "audit" else store.denied("acme", 10_000)
        for kind in ("audit", "denied")
    }
    archive = AuditArchive(any_db)

    moved = archive_all(store.client, store.keys, archive, keep=50)

    assert moved == {"audit": 400, "denied": 10, "operator": 0}
    assert store.client.llen(store.keys.audit("acme")) == 50
    assert store.audit("acme", 10_000) == before["audit"][:50]  # the newest stay in Redis
    assert archived_count(any_db, "audit", "acme") == 400
    assert archived_count(any_db, "denied", "acme") == 10
    assert whole(store, archive) == before["audit"]  # old and new values, os_user, versions
    assert whole(store, archive, "denied") == before["denied"]


def test_archiving_twice_or_after_a_crash_before_the_trim_stores_each_entry_once(
    store: SettingsStore, any_db: Database
) -> None:
    grants(store, 299)
    before = store.audit("acme", 10_000)
    archive, key = AuditArchive(any_db), store.keys.audit("acme")
    # a run that inserted its batch and died before trimming it
    assert archive.insert("audit", [str(r) for r in store.client.lrange(key, -120, -1)]) == 120
    assert whole(store, archive) == before  # shown once although in both places

    assert archive_all(store.client, store.keys, archive, keep=100)["audit"] == 200
    assert archive_all(store.client, store.keys, archive, keep=100)["audit"] == 0
    assert archived_count(any_db, "audit", "acme") == 200
    assert whole(store, archive) == before


def test_entries_pushed_while_a_list_is_archived_are_all_kept_once_in_order(
    store: SettingsStore, real: redis.Redis, db: Database
) -> None:
    grants(store, 300)
    archive, key = AuditArchive(db), store.keys.audit("acme")
    writer = SettingsStore(
        redis.Redis(connection_pool=real.connection_pool),
        store.keys,
        clock=store.clock,
        os_user="ops",
    )
    done = threading.Event()

    def push() -> None:
        grants(writer, 300, start=1000)
        done.set()

    thread = threading.Thread(target=push)
    thread.start()
    rounds = 0
    while not done.is_set() or real.llen(key) > 20:
        archive_list(real, key, "audit", archive, keep=20, batch=7)  # many small batches
        rounds += 1
    thread.join()

    entries = whole(store, archive)
    assert len(entries) == 601 and len({e.model_dump_json() for e in entries}) == 601
    assert [e.at for e in entries] == sorted((e.at for e in entries), reverse=True)
    # Whether the writer finished before or during the archiving depends on the machine's load;
    # what must hold either way: every entry once, in order, and the list down to the keep.
    assert real.llen(key) <= 20 and rounds >= 1


def test_a_trim_removes_only_archived_entries_still_at_the_tail_when_the_cap_dropped_some(
    store: SettingsStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("erp_sync.control.unit.AUDIT_CAP", 30)
    grants(store, 40)  # at the cap: 30 entries
    key, archive = store.keys.audit("acme"), AuditArchive(db)
    batch = [str(r) for r in store.client.lrange(key, -10, -1)]
    archive.insert("audit", batch)
    grants(store, 3, start=100)  # the cap drops the 3 oldest, all of them in the batch
    after_pushes = store.audit("acme", 100)

    trimmed = lua.load(store.client, "audit_trim")(keys=[key], args=batch)

    assert trimmed == 7
    assert store.audit("acme", 100) == after_pushes[:23]  # nothing newer than the batch went
    assert whole(store, AuditArchive(db)) == after_pushes + [
        AuditEntry.model_validate_json(r) for r in batch[-3:]
    ]  # dropped by the cap, archived


def test_a_trim_removes_nothing_when_the_tail_is_no_longer_what_was_read(
    store: SettingsStore,
) -> None:
    grants(store, 5)
    key = store.keys.audit("acme")
    assert lua.load(store.client, "audit_trim")(keys=[key], args=["x", "y"]) == 0
    assert store.client.llen(key) == 6


def test_the_operator_log_is_archived_like_a_company_log(
    store: SettingsStore, db: Database
) -> None:
    for i in range(12):
        store.add_company(f"co{i}", "viewpoint_vista")
    before = store.operator_log(100)
    archive = AuditArchive(db)
    assert archive_all(store.client, store.keys, archive, keep=5)["operator"] == 8
    assert store.operator_log(100) == before[:5]
    assert whole(store, archive, "operator") == before


def test_audit_shows_redis_then_the_archive_newest_first_with_the_limit_across_both(
    store: SettingsStore, db: Database
) -> None:
    grants(store, 99)
    refusals(store, 15)
    before, denied = store.audit("acme", 1000), store.denied("acme", 1000)
    archive_all(store.client, store.keys, AuditArchive(db), keep=10)
    run = invoker(store.client)

    code, out, err = run("audit", "acme", "--json", "--limit", "30")
    assert code == 0 and err == "", err
    assert [AuditEntry.model_validate(e) for e in json.loads(out)] == before[:30]
    code, out, _ = run("audit", "acme", "--json", "--limit", "10000")
    assert [AuditEntry.model_validate(e) for e in json.loads(out)] == before
    code, out, _ = run("audit", "acme", "--denied", "--json")
    assert [AuditEntry.model_validate(e) for e in json.loads(out)] == denied

    code, out, _ = run("audit", "acme", "--limit", "12")
    lines = out.splitlines()[1:]
    assert len(lines) == 12 and "user98" in lines[0] and "user87" in lines[-1]


def test_operator_log_shows_redis_then_the_archive(store: SettingsStore, db: Database) -> None:
    for i in range(6):
        store.add_company(f"co{i}", "viewpoint_vista")
    before = store.operator_log(100)
    archive_all(store.client, store.keys, AuditArchive(db), keep=2)
    code, out, _ = invoker(store.client)("operator-log", "--json")
    assert code == 0
    assert [AuditEntry.model_validate(e) for e in json.loads(out)] == before


def test_with_the_database_down_audit_shows_the_recent_part_and_says_so_in_one_line(
    store: SettingsStore, db: Database, env: pytest.MonkeyPatch
) -> None:
    grants(store, 29)
    archive_all(store.client, store.keys, AuditArchive(db), keep=10)
    env.setenv("ERP_SYNC_DATABASE_URL", "postgresql+psycopg://u:hunter2@127.0.0.1:9/gone")
    get_settings.cache_clear()

    code, out, err = invoker(store.client)("audit", "acme", "--json")

    assert code == 0
    assert [AuditEntry.model_validate(e) for e in json.loads(out)] == store.audit("acme", 100)
    assert len(err.strip().splitlines()) == 1, err
    assert "older entries could not be read" in err and "hunter2" not in err


def test_the_archive_task_runs_through_celery_and_is_sent_hourly_on_alerts(
    store: SettingsStore, env: pytest.MonkeyPatch, db: Database
) -> None:
    from tasks import maintenance

    grants(store, 59)
    env.setenv("ERP_SYNC_AUDIT_KEEP", "25")
    get_settings.cache_clear()
    maintenance._client.cache_clear()
    try:
        result = maintenance.archive_audit.apply().get()
    finally:
        maintenance._client.cache_clear()
    assert result == {"audit": 35, "denied": 0, "operator": 0}
    assert store.client.llen(store.keys.audit("acme")) == 25
    assert archived_count(db, "audit", "acme") == 35

    config = celery_config(get_settings())
    entry = next(e for e in config["beat_schedule"].values() if e["task"] == ARCHIVE_AUDIT_TASK)
    assert entry["schedule"] == 3600.0 and entry["options"]["queue"] == ALERTS_QUEUE
    assert config["task_routes"][ARCHIVE_AUDIT_TASK] == {"queue": ALERTS_QUEUE}


@pytest.mark.parametrize("value", ["0", "2001", "many"])
def test_a_bad_audit_keep_is_a_one_line_config_error(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("ERP_SYNC_AUDIT_KEEP", value)
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="ERP_SYNC_AUDIT_KEEP") as raised:
        get_settings()
    assert "\n" not in str(raised.value)


def test_the_keep_is_bounded_by_the_stores_hard_cap() -> None:
    from config.env import Settings

    bound = next(m.le for m in Settings.model_fields["audit_keep"].metadata if hasattr(m, "le"))
    assert bound == AUDIT_CAP
