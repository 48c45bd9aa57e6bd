"""Alert delivery on real processes: at least once, posted once, never doubled by the broker.

* A process that records a failure's incident and is killed (``os._exit``) before it queues the
  webhook delivery: the real worker's periodic check (``tasks.alerts.check_stale``) queues it
  again and the real loopback receiver gets it exactly once; a second copy of the same
  delivery queued under another task id posts nothing.
* A retry whose backoff would outlast the broker's visibility timeout (here 4 s; a 3 s base
  doubling) is not handed out twice: each attempt is posted and logged once.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.alerts import AlertEvent, AlertRule
from config.keys import KeySpace
from erp_sync.alerts.deliver import deliveries
from erp_sync.alerts.evaluate import redis_now
from erp_sync.alerts.outbox import GRACE as OUTBOX_GRACE
from erp_sync.alerts.rules import AlertRules
from erp_sync.control.store import SettingsStore
from tests.support.erp import small_company
from tests.support.procs import CELERY, ROOT, process_env, stop_all, wait_until, worker
from tests.support.receiver import Receiver, start_receiver
from tests.support.redisproc import RedisServer
from tests.support.stack import ProcStack

pytestmark = [pytest.mark.integration, pytest.mark.processes]

# Records a failed run's incident, then dies where it would queue the delivery.
DIES_BEFORE_QUEUEING = """
import os
from config.env import get_settings
from config.keys import KeySpace
from erp_sync.alerts.evaluate import Evaluator, RunOutcome
from erp_sync.infra.redis_client import connect

env = get_settings()
def killed(rule, message):
    os._exit(9)
Evaluator(connect(env.redis_url), KeySpace(env.key_prefix), env.seconds_per_hour, killed).on_run(
    RunOutcome("acme", "vendors", None, "failed", "ERP said no", "2030-01-01T00:00:00Z")
)
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


def make_stack(redis_server: RedisServer, prefix: str, logs: Path, **env: str) -> ProcStack:
    return ProcStack(
        env={
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_ALERT_TIMEOUT_SECONDS": "2",
            **env,
        },
        client=redis_server.client(),
        keys=KeySpace(prefix),
        logs=logs,
    )


def add_rule(client: redis.Redis, keys: KeySpace, url: str) -> AlertRule:
    small_company(client, keys, projects=())
    return AlertRules(SettingsStore(client, keys)).add(
        "acme", "alice", url=url, events=[AlertEvent.FAILED], failures=1, secret=None
    )


def call(stack: ProcStack, name: str, kwargs: dict[str, Any] | None = None) -> None:
    """``celery call NAME`` on the ``alerts`` queue, as a separate process would queue it."""
    args = [*CELERY, "call", name, "--queue", "alerts"]
    if kwargs is not None:
        args += ["--kwargs", json.dumps(kwargs)]
    done = subprocess.run(
        args, cwd=ROOT, env=process_env(stack.env), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_an_alert_whose_sender_died_before_queueing_it_is_delivered_exactly_once(
    redis_server: RedisServer, prefix: str, tmp_path: Path, receiver: Receiver
) -> None:
    stack = make_stack(redis_server, prefix, tmp_path)
    client, keys = stack.client, stack.keys
    rule = add_rule(client, keys, receiver.url)
    died = subprocess.run(
        [sys.executable, "-c", DIES_BEFORE_QUEUEING],
        cwd=ROOT,
        env=process_env(stack.env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 9, died.stderr
    assert client.hget(keys.alert_state("acme"), "vendors:-") is not None  # the incident
    ((field, raw),) = client.hgetall(keys.alert_outbox("acme")).items()
    delivery = str(field)
    try:
        stack.procs.append(worker("worker", stack.env, stack.logs, queues="alerts"))
        # A delivery younger than the grace may still be being queued: as if the grace had
        # passed (instead of sleeping it out), the entry and the index are backdated, which is
        # all the check reads of time.
        entry = json.loads(str(raw))
        entry["at"] = redis_now(client) - OUTBOX_GRACE - 1
        client.hset(keys.alert_outbox("acme"), delivery, json.dumps(entry))
        client.zadd(keys.alert_outbox_due, {"acme": entry["at"] + OUTBOX_GRACE})
        call(stack, "tasks.alerts.check_stale")  # what beat sends every stale-check period
        wait_until(lambda: receiver.got, 60, f"never delivered:\n{stack.procs[0].output()}")
        call(stack, "tasks.alerts.check_stale")  # nothing waits any more: nothing queued
        message = json.loads(str(raw))["message"]
        call(
            stack, "tasks.alerts.deliver", {"company": "acme", "alert": rule.id, "message": message}
        )
        wait_until(
            lambda: f"delivery={delivery} outcome=duplicate" in stack.procs[0].output(),
            60,
            f"the second copy never ran:\n{stack.procs[0].output()[-3000:]}",
        )
        wait_until(
            lambda: (
                len(
                    re.findall(
                        r"Task tasks\.alerts\.check_stale\[\S+\] succeeded", stack.procs[0].output()
                    )
                )
                == 2
            ),
            60,
            "the periodic checks never finished",
        )
    finally:
        stop_all(stack.procs)
    assert [r.body["delivery"] for r in receiver.got] == [delivery]
    assert receiver.got[0].body["event"] == "failed"
    logged = [(e.delivery, e.outcome) for e in deliveries(client, keys, "acme")]
    assert logged == [(delivery, "delivered")]
    assert client.exists(keys.alert_outbox("acme")) == 0


def test_a_retry_longer_than_the_visibility_timeout_is_not_posted_twice(
    redis_server: RedisServer, prefix: str, tmp_path: Path, receiver: Receiver
) -> None:
    stack = make_stack(
        redis_server,
        prefix,
        tmp_path,
        ERP_SYNC_VISIBILITY_TIMEOUT="4",
        ERP_SYNC_TASK_TIME_LIMIT="2",
        ERP_SYNC_TASK_SOFT_TIME_LIMIT="1",
        ERP_SYNC_ALERT_RETRY_SECONDS="3",  # uncapped: waits of 3 s and 6 s, past the 4 s
        ERP_SYNC_ALERT_ATTEMPTS="3",
    )
    rule = add_rule(stack.client, stack.keys, receiver.url)
    receiver.statuses += [500, 500]  # two failed attempts, then delivered
    message = {
        "event": "failed",
        "alert": rule.id,
        "delivery": "d-visibility",
        "company": "acme",
        "kind": "vendors",
        "project": None,
        "slot": "s1",
        "status": "failed",
        "error": "ERP said no",
        "time": "2030-01-01T00:00:00+00:00",
        "summary": "vendors sync of acme failed",
    }
    try:
        stack.procs.append(worker("worker", stack.env, stack.logs, queues="alerts"))
        call(
            stack, "tasks.alerts.deliver", {"company": "acme", "alert": rule.id, "message": message}
        )
        wait_until(
            lambda: any(
                e.outcome == "delivered" for e in deliveries(stack.client, stack.keys, "acme")
            ),
            60,
            f"never delivered:\n{stack.procs[0].output()[-3000:]}",
        )
        time.sleep(6)  # time that must pass: past the visibility timeout, for any second copy
    finally:
        stop_all(stack.procs)
    attempts = sorted((e.attempt, e.outcome) for e in deliveries(stack.client, stack.keys, "acme"))
    assert attempts == [(1, "retrying"), (2, "retrying"), (3, "delivered")]
    assert len(receiver.got) == 3
