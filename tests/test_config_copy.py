"""The database's durable copy of the configuration only Redis holds: written with every change
(by revision, never backwards), caught up after the database refused it, and restored into an
emptied Redis by ``restore-from-db``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import insert, text

from config.env import get_settings
from config.keys import KeySpace
from config.members import due_member
from config.models import AuditEntry, StoredSettings, SyncKind
from config.snapshot import FLEET, Snapshot
from erp_sync.cli.restore_cmd import copy_changed
from erp_sync.control import snapshot
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.pause import Pauses
from erp_sync.control.permissions import Permissions
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import UnitOfWork
from erp_sync.db import Database
from erp_sync.db.audit import AuditArchive
from erp_sync.db.config_copy import ConfigCopy
from erp_sync.db.schema import sync_runs
from erp_sync.infra.celery_config import COPY_CONFIG_TASK, celery_config
from erp_sync.infra.slots import ALERTS_QUEUE
from tests.support.cli import Invoke, invoker
from worker import app


@pytest.fixture
def run(fake: redis.Redis, env: pytest.MonkeyPatch) -> Invoke:
    return invoker(fake)


def _configured(store: SettingsStore) -> None:
    """A company with a bit of everything only Redis holds, and a second one."""
    store.add_company("acme", "xero", admin="al")
    store.add_company("stone", "sage_100", admin="bo")
    store.add_project("acme", "p1")
    store.add_project("acme", "p2")
    Lifecycle(store).set_project("acme", "p2", "al", sync_job_costs=False)
    Permissions(store).grant("acme", "cy", "standard", "al")
    store.update_settings("acme", "al", {"payments_for_synced_invoices": "hourly"})
    Pauses(store).pause("stone", "bo", reason="month end", until=None)
    _connect(store, "acme", generation=7)


def _connect(store: SettingsStore, company: str, generation: int) -> None:
    """A connection write as the connection store makes one (sealed secret: opaque here)."""
    key = store.keys.connection(company)

    def write(work: UnitOfWork) -> None:
        work.begin()
        work.pipe.hset(
            key, mapping={"meta": '{"erp": "xero"}', "secret": f"gAAAA-sealed-{generation}"}
        )
        work.pipe.hset(key, "generation", generation)

    store.transact([key], write, company=company)


def _alert(store: SettingsStore, company: str) -> None:
    """An alert rule written as the rule store writes one (its validation is not tested here)."""
    key = store.keys.alerts(company)

    def write(work: UnitOfWork) -> None:
        work.begin()
        work.pipe.hset(key, "a1", '{"id": "a1", "url": "https://hooks.example.com/x"}')
        work.audited(company, "al", "alert.add", {}, {"id": "a1"})

    store.transact([key], write, company=company)


def _config(client: redis.Redis, keys: KeySpace, company: str) -> dict[str, object]:
    got = snapshot.read(client, keys, company).model_dump()
    got.pop("rev")
    return got


def test_every_admin_change_marks_its_company_and_the_copy_takes_the_newest(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    store = SettingsStore(fake, keys)
    _configured(store)
    assert set(fake.hkeys(keys.config_dirty)) == {"acme", "stone"}
    done = copy_changed(fake, keys, db)
    assert done.error is None and set(done.copied) == {"acme", "stone"}
    assert fake.hlen(keys.config_dirty) == 0
    copied = ConfigCopy(db).get("acme")
    assert copied is not None and copied.rev == int(fake.hget(keys.config_revs, "acme") or 0)
    settings = StoredSettings.model_validate_json(str(copied.settings))
    assert settings.version == 2 and settings.settings.payments_for_synced_invoices == "hourly"
    assert copied.users == {"al": "admin", "cy": "standard"}
    assert set(copied.projects) == {"p1", "p2"} and copied.optouts == ["p2"]
    assert copied.connection["secret"] == "gAAAA-sealed-7"  # as stored: never opened
    stone = ConfigCopy(db).get("stone")
    assert stone is not None and stone.pause is not None and "month end" in stone.pause


def test_the_copy_never_goes_back_to_an_older_revision(any_db: Database) -> None:
    copy = ConfigCopy(any_db)
    assert copy.save(Snapshot(scope="acme", rev=5, company="{}", settings="new"))
    assert not copy.save(Snapshot(scope="acme", rev=3, company="{}", settings="old"))
    assert not copy.save(Snapshot(scope="acme", rev=5, company="{}", settings="same rev"))
    kept = copy.get("acme")
    assert kept is not None and (kept.rev, kept.settings) == (5, "new")
    assert copy.save(Snapshot(scope="acme", rev=6, company="{}", settings="newer"))


def test_revisions_only_increase_also_for_a_company_made_again(
    fake: redis.Redis, keys: KeySpace
) -> None:
    store = SettingsStore(fake, keys)
    store.add_company("acme", "xero", admin="al")
    first = int(fake.hget(keys.config_revs, "acme") or 0)
    Lifecycle(store).remove_company("acme", "al")
    store.add_company("acme", "xero", admin="al")
    assert int(fake.hget(keys.config_revs, "acme") or 0) > first
    fake.flushall()  # a Redis that lost everything: revisions still come from its clock
    store.add_company("acme", "xero", admin="al")
    assert int(fake.hget(keys.config_revs, "acme") or 0) > first


def test_a_token_rotation_in_the_store_transaction_is_copied_too(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    store = SettingsStore(fake, keys)
    store.add_company("acme", "xero", admin="al")
    _connect(store, "acme", generation=1)
    copy_changed(fake, keys, db)
    _connect(store, "acme", generation=2)  # a worker's rotation: no audit entry, no message
    assert fake.hexists(keys.config_dirty, "acme")
    copy_changed(fake, keys, db)
    copied = ConfigCopy(db).get("acme")
    assert copied is not None and copied.connection["generation"] == "2"


def test_the_cli_copies_what_a_command_changed_before_it_exits(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    assert run("company", "add", "acme", "--erp", "xero", "--admin", "al")[0] == 0
    code, _out, err = run("settings", "set", "acme", "--as", "al", "--no-refresh-jobs", "--no-wait")
    assert code == 0, err
    copied = ConfigCopy(db).get("acme")
    assert copied is not None
    assert StoredSettings.model_validate_json(str(copied.settings)).version == 2
    assert fake.hlen(keys.config_dirty) == 0
    audit = [e.action for e in _archived(db, "acme")]
    assert "settings.update" in audit and "company.create" in audit


def test_a_change_the_database_refused_stays_marked_and_a_later_copy_takes_it(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    assert run("company", "add", "acme", "--erp", "xero", "--admin", "al")[0] == 0
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE config_copy RENAME TO config_copy_away"))
    code, _out, err = run("settings", "set", "acme", "--as", "al", "--no-refresh-jobs", "--no-wait")
    assert code == 0  # the change is made; its copy waits
    assert err.startswith("warning: the change is in Redis but its copy in the database failed")
    assert len(err.strip().splitlines()) == 1
    assert fake.hexists(keys.config_dirty, "acme")
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE config_copy_away RENAME TO config_copy"))
    assert copy_changed(fake, keys, db).copied == ["acme"]  # the periodic copy's pass
    copied = ConfigCopy(db).get("acme")
    assert copied is not None
    assert StoredSettings.model_validate_json(str(copied.settings)).version == 2


def test_restore_from_db_brings_back_every_company_after_a_flush(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    store = SettingsStore(fake, keys)
    _configured(store)
    _alert(store, "acme")
    Pauses(store).pause(None, "ops", reason="upgrade", until=None)
    store.add_company("gone", "xero", admin="al")
    Lifecycle(store).remove_company("gone", "al")
    copy_changed(fake, keys, db)
    before = {c: _config(fake, keys, c) for c in ("acme", "stone", FLEET)}
    removed = fake.hget(keys.removed, "gone")
    fake.flushall()

    code, out, err = run("restore-from-db")  # asks; no answer: refuses, writes nothing
    assert code == 1 and err.strip() == "error: aborted"
    assert "acme" in out and "restored" in out
    assert fake.dbsize() == 0

    code, out, err = run("restore-from-db", "--yes")
    assert code == 0, err
    assert {c: _config(fake, keys, c) for c in ("acme", "stone", FLEET)} == before
    assert set(fake.smembers(keys.companies)) == {"acme", "stone"}
    assert fake.hget(keys.removed, "gone") == removed
    assert int(fake.get(keys.connection_generations) or 0) >= 7
    messages = [
        str(dict(fields or {}).get("company")) for _id, fields in fake.xrange(keys.changes) or []
    ]
    assert sorted(messages) == ["acme", "stone"]  # beat plans both at once
    # Restoring again changes nothing: Redis now holds them at newer revisions.
    code, out, _ = run("restore-from-db", "--yes")
    assert code == 0 and "nothing to restore" in out


def test_restore_never_lets_beat_send_a_slot_the_history_shows_ran(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    store = SettingsStore(fake, keys)
    store.add_company("acme", "xero", admin="al")
    copy_changed(fake, keys, db)
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        for slot, trigger in (
            ("2026-12-08T10:00:00Z", "schedule"),
            ("2026-12-08T11:00:00Z", "manual"),
        ):
            conn.execute(
                insert(sync_runs).values(
                    task_id=f"t{slot}",
                    company="acme",
                    kind="vendors",
                    project=None,
                    scheduled_for=slot,
                    started_at=now,
                    status="succeeded",
                    counts="{}",
                    trigger=trigger,
                    attempt=1,
                )
            )
    fake.flushall()
    assert run("restore-from-db", "--yes")[0] == 0
    last = float(fake.hget(keys.beat_slots, due_member("acme", SyncKind.VENDORS)) or 0)
    ran = datetime(2026, 12, 8, 10, tzinfo=UTC).timestamp()
    assert ran < last < ran + 1  # that slot is never sent again; the next one still is


def test_restore_keeps_a_company_redis_holds_at_a_newer_revision(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    store = SettingsStore(fake, keys)
    store.add_company("acme", "xero", admin="al")
    copy_changed(fake, keys, db)
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})  # newer, not copied
    code, out, err = run("restore-from-db", "--yes")
    assert code == 0, err
    assert "kept" in out and "nothing to restore" in out
    assert store.sync_settings("acme").version == 2


def test_restore_keeps_a_company_redis_holds_without_a_revision_and_replaces_an_older_one_if_forced(
    run: Invoke, fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    store = SettingsStore(fake, keys)
    store.add_company("acme", "xero", admin="al")
    store.add_company("stone", "xero", admin="bo")
    store.update_settings("acme", "al", {"refresh_erp_job_list": False})
    store.update_settings("stone", "bo", {"refresh_erp_job_list": False})
    copy_changed(fake, keys, db)
    Permissions(store).grant("acme", "cy", "admin", "al")  # not copied yet
    Permissions(store).grant("stone", "dee", "admin", "bo")
    fake.hdel(keys.config_revs, "acme")  # as a version before revisions left it
    fake.hset(keys.config_revs, "stone", "1")  # older than the copy's
    code, out, _err = run("restore-from-db")  # asked, no answer: what it would do
    assert code == 1 and "--force replaces it" in out  # older: kept unless forced
    code, _out, err = run("restore-from-db", "--yes", "--force")
    assert code == 0, err
    assert "cy" in fake.hgetall(keys.users("acme"))  # kept as Redis holds it
    assert "dee" not in fake.hgetall(keys.users("stone"))  # replaced by the newer copy
    assert store.sync_settings("stone").version == 2


def _archived(db: Database, company: str) -> list[AuditEntry]:
    return AuditArchive(db).older("audit", company, 100)


def test_the_copy_is_json_a_person_can_read(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    SettingsStore(fake, keys).add_company("acme", "xero", admin="al")
    copy_changed(fake, keys, db)
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT data, removed FROM config_copy WHERE scope='acme'")).one()
    assert json.loads(row.data)["users"] == {"al": "admin"} and not row.removed


@pytest.mark.integration
def test_the_periodic_task_copies_what_no_command_copied(
    real: redis.Redis, keys: KeySpace, db: Database
) -> None:
    from tasks import config_copy

    config_copy._client.cache_clear()
    store = SettingsStore(real, keys)
    store.add_company("acme", "xero", admin="al")
    _connect(store, "acme", generation=4)  # a worker's rotation: nothing copies it at once
    try:
        assert config_copy.copy_config.apply().get() == {"copied": 1, "error": None}
    finally:
        config_copy._client.cache_clear()
    copied = ConfigCopy(db).get("acme")
    assert copied is not None and copied.connection["generation"] == "4"
    assert real.hlen(keys.config_dirty) == 0


def test_the_leading_beat_sends_the_copy_every_minute_to_the_alerts_workers() -> None:
    """The bound the operator guide gives (60 s while the database accepts writes) holds only
    if the periodic copy is in the app's beat schedule, routed to the alerts queue, and a
    worker has the task."""
    config = celery_config(get_settings())
    entry = next(e for e in config["beat_schedule"].values() if e["task"] == COPY_CONFIG_TASK)
    assert entry["schedule"] <= 60 and entry["options"]["queue"] == ALERTS_QUEUE
    assert config["task_routes"][COPY_CONFIG_TASK] == {"queue": ALERTS_QUEUE}
    app.loader.import_default_modules()
    assert COPY_CONFIG_TASK in app.tasks
