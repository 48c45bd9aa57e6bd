"""No change is lost when the change stream overruns a running leader (its cap is a setting).

In-process against a real redis-server: the leader runs, then more changes than the stream
keeps arrive before its next read. It notices the trim on that read and rebuilds, so every
company ends on its newest settings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from config.keys import KeySpace
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.control.store import SettingsStore
from erp_sync.schedule.applied import applied_version
from tests.support.clock import Clock

pytestmark = pytest.mark.integration
CAP = 10


@pytest.fixture
def engine(real: redis.Redis, keys: KeySpace) -> Iterator[BeatEngine]:
    engine = BeatEngine(
        Celery("test", set_as_current=False),
        real,
        keys,
        EngineConfig(lease_seconds=2, max_block=0.01, change_batch=7),
        clock=Clock(1_800_000_000.0),
        node="a",
    )
    yield engine
    engine.close()


def settle(engine: BeatEngine) -> int:
    """Step until the engine holds a change cursor (a rebuild goes a batch a step)."""
    for steps in range(1, 100):
        engine.step()
        if engine.cursor is not None:
            return steps
    raise AssertionError("the rebuild never finished")


def test_a_leader_that_falls_more_than_the_cap_behind_rebuilds_and_loses_no_change(
    real: redis.Redis, keys: KeySpace, engine: BeatEngine, caplog: pytest.LogCaptureFixture
) -> None:
    store = SettingsStore(real, keys, change_stream_maxlen=CAP)
    companies = [f"c{n:02d}" for n in range(50)]
    for company in companies:
        store.add_company(company, "xero")
        store.grant(company, "al", "admin")
    settle(engine)  # leads, builds every schedule (7 companies a step), holds a cursor
    assert all(applied_version(real, keys, c) == 1 for c in companies)
    for company in companies:  # 50 changes: the stream keeps the last 10
        store.update_settings(company, "al", {"payments_for_synced_invoices": "hourly"})
    assert real.xlen(keys.changes) == CAP
    settle(engine)  # notices the trim on its next read, rebuilds a batch a step
    behind = [c for c in companies if applied_version(real, keys, c) != 2]
    assert behind == [], f"{len(behind)} companies kept their old schedule"
    assert "trimmed past cursor" in caplog.text


def test_reading_in_batches_within_the_cap_applies_every_change_without_a_rebuild(
    real: redis.Redis, keys: KeySpace, engine: BeatEngine, caplog: pytest.LogCaptureFixture
) -> None:
    store = SettingsStore(real, keys, change_stream_maxlen=CAP)
    for company in ("a", "b", "c"):
        store.add_company(company, "xero")
        store.grant(company, "al", "admin")
    engine.step()
    for company in ("a", "b", "c"):
        store.update_settings(company, "al", {"refresh_erp_job_list": False})
    engine.step()
    assert all(applied_version(real, keys, c) == 2 for c in ("a", "b", "c"))
    assert "trimmed" not in caplog.text


def test_the_change_stream_cap_is_an_environment_setting(env: pytest.MonkeyPatch) -> None:
    from config.env import get_settings

    env.setenv("ERP_SYNC_CHANGE_STREAM_MAXLEN", "500")
    assert get_settings().change_stream_maxlen == 500


def test_due_entries_keep_being_dispatched_while_a_rebuild_runs(
    real: redis.Redis, keys: KeySpace, engine: BeatEngine
) -> None:
    store = SettingsStore(real, keys)
    for n in range(50):
        store.add_company(f"c{n:02d}", "xero")
    settle(engine)
    real.delete(keys.beat_cursor)
    engine.lease.release()  # a new leader finds no cursor: it rebuilds, 7 companies a step
    engine.config.budget = 0.0  # one batch a step (a real step rebuilds for up to 50 ms)
    assert isinstance(engine.clock, Clock)
    engine.clock.t += 2 * 3600 + 1  # meanwhile every entry came due
    engine.step()
    assert engine.cursor is None  # still rebuilding ...
    assert int(real.hget(keys.beat_stats, "slots") or 0) > 0  # ... and already dispatching
    steps = settle(engine)
    assert 5 <= steps <= 10  # 50 companies, 7 a step
