"""A worker killed after its run finished, before the alert evaluation: the alert still comes.

The doomed worker is a real Celery worker (``-P solo``) whose ``tasks.evaluate_alerts`` exits
the process (``os._exit``): it dies exactly between the run's commit point in Redis
(``run_finish.lua``) and the evaluation. Then either the redelivery of its message (after the
visibility timeout) finds the executed marker, returns ``duplicate`` and evaluates the outcome
that waits in the outbox at once, or, with no company worker, the periodic check on a real
alerts worker evaluates it after the grace. The loopback receiver gets the ``failed`` alert
exactly once either way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.alerts import AlertEvent
from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.alerts.evaluate import redis_now
from erp_sync.alerts.outbox import GRACE
from erp_sync.alerts.rules import AlertRules
from erp_sync.control.store import SettingsStore
from tests.support import procs
from tests.support.erp import Sender, small_company
from tests.support.receiver import Receiver, start_receiver
from tests.support.redisproc import RedisServer
from tests.support.workers import finished

pytestmark = [pytest.mark.integration, pytest.mark.processes]

# A real worker whose process dies where the sync task would evaluate alerts.
DIES_BEFORE_EVALUATING = """
import os
import tasks

def killed(outcome):
    os._exit(9)

tasks.evaluate_alerts = killed
from worker import app
app.worker_main(["worker", "-Q", "company,project", "-P", "solo", "-n", "doomed@%h",
                 "-l", "INFO", "--without-mingle", "--without-gossip"])
"""
LIMITS = {
    "ERP_SYNC_TASK_SOFT_TIME_LIMIT": "3",
    "ERP_SYNC_TASK_TIME_LIMIT": "3.5",
    "ERP_SYNC_VISIBILITY_TIMEOUT": "4",
    "ERP_SYNC_ALERT_TIMEOUT_SECONDS": "2",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


def call(env: dict[str, str], name: str) -> None:
    """``celery call NAME`` on the ``alerts`` queue (what beat sends every stale-check period)."""
    done = subprocess.run(
        [*procs.CELERY, "call", name, "--queue", "alerts"],
        cwd=procs.ROOT,
        env=procs.process_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("rescue", ["redelivery", "periodic check"])
def test_a_worker_killed_between_the_finish_and_the_evaluation_loses_no_alert(
    real: redis.Redis,
    redis_server: RedisServer,
    keys: KeySpace,
    prefix: str,
    tmp_path: Path,
    receiver: Receiver,
    rescue: str,
) -> None:
    env = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix, **LIMITS}
    small_company(real, keys, projects=()).configure("acme", permanent="bad_credentials")
    AlertRules(SettingsStore(real, keys)).add(
        "acme", "alice", url=receiver.url, events=[AlertEvent.FAILED], failures=1, secret=None
    )
    doomed = procs.Proc("doomed", [sys.executable, "-c", DIES_BEFORE_EVALUATING], env, tmp_path)
    started: list[procs.Proc] = []
    sender = Sender(env)
    try:
        doomed.wait_for(" ready.", 30)
        task_id = sender.send(SyncKind.VENDORS, "acme", "k1")
        procs.wait_until(lambda: not doomed.alive(), 30, f"never died:\n{doomed.output()[-3000:]}")
        assert finished(real, keys, "acme", task_id).status == "failed"  # committed, then killed
        assert receiver.got == []
        raw = real.hget(keys.alert_outbox("acme"), f"run:{task_id}")
        assert raw is not None, "nothing waits to be evaluated: the alert is lost"
        queues = "company,project,alerts" if rescue == "redelivery" else "alerts"
        rescuer = procs.worker("rescuer", env, tmp_path, queues=queues, concurrency=2)
        started.append(rescuer)
        rescuer.wait_for(" ready.", 30)
        if rescue == "periodic check":
            # As if GRACE had passed (instead of sleeping it out): the entry and the index are
            # backdated, which is all the check reads of time.
            entry = json.loads(str(raw))
            entry["at"] = redis_now(real) - GRACE - 1
            real.hset(keys.alert_outbox("acme"), f"run:{task_id}", json.dumps(entry))
            real.zadd(keys.alert_outbox_due, {"acme": entry["at"] + GRACE})
            call(env, "tasks.alerts.check_stale")
        procs.wait_until(
            lambda: receiver.got, 40, f"the alert never came:\n{rescuer.output()[-3000:]}"
        )
        if rescue == "redelivery":
            assert "'status': 'duplicate'" in rescuer.output()  # it ran nothing again
        call(env, "tasks.alerts.check_stale")  # nothing waits any more: nothing queued
        procs.wait_until(
            lambda: rescuer.output().count("tasks.alerts.check_stale[") >= 2, 30, "no check ran"
        )
        assert [r.body["event"] for r in receiver.got] == ["failed"]
        assert not real.hexists(keys.alert_outbox("acme"), f"run:{task_id}")
    finally:
        sender.close()
        procs.stop_all([doomed, *started])
