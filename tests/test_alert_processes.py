"""Alerts on real processes: a real ``celery worker`` (consuming ``alerts`` too) posts to a real
local HTTP receiver. Failures alert once, recovery once, signatures verify, an unreachable
receiver is retried then logged failed; with a real beat and no sync workers, a sync that
never succeeds is reported stale. Every wait is on an observable condition."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from config.keys import KeySpace
from erp_sync.alerts.deliver import SIGNATURE_HEADER, deliveries
from tests.support.erp import small_company
from tests.support.procs import beat, stop_all, wait_until, worker
from tests.support.receiver import Receiver, start_receiver
from tests.support.redisproc import RedisServer
from tests.support.stack import ProcStack

pytestmark = [pytest.mark.integration, pytest.mark.processes]
SECRET = "whsec-123"
DONE = re.compile(r"Task tasks\.company\.refresh_vendors\[(\S+)\] succeeded")


@dataclass
class Stack(ProcStack):
    receiver: Receiver = field(kw_only=True)

    def add_alert(self, company: str, url: str, *extra: str) -> str:
        secret = self.logs / "secret"
        secret.write_text(SECRET)
        out = self.manage(
            "alert",
            "add",
            company,
            "--as",
            "alice",
            "--url",
            url,
            "--secret-file",
            str(secret),
            *extra,
        )
        return out.split("added alert ", 1)[1].split()[0]

    def sync_now(self) -> None:
        """Queue a vendors sync of acme and wait until the worker has finished the task."""
        before = len(DONE.findall(self.procs[0].output()))
        self.manage("sync-now", "acme", "vendors", "--as", "alice")
        wait_until(
            lambda: len(DONE.findall(self.procs[0].output())) > before,
            60,
            f"the sync never finished:\n{self.procs[0].output()[-3000:]}",
        )


@pytest.fixture
def stack(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    receiver = start_receiver()
    s = Stack(
        env={
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_ALERT_RETRY_SECONDS": "0.2",
            "ERP_SYNC_ALERT_ATTEMPTS": "3",
            "ERP_SYNC_ALERT_TIMEOUT_SECONDS": "2",
            "ERP_SYNC_BEAT_LEASE_SECONDS": "2",
            "ERP_SYNC_SETTINGS_WAIT_SECONDS": "0",
            "ERP_SYNC_SECRET_KEY": Fernet.generate_key().decode(),
        },
        client=redis_server.client(),
        keys=KeySpace(prefix),
        logs=tmp_path,
        receiver=receiver,
    )
    yield s
    stop_all(s.procs)
    receiver.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_failures_alert_once_recovery_once_and_an_unreachable_hook_is_retried(stack: Stack) -> None:
    data = small_company(stack.client, stack.keys, "acme", projects=())
    hook = stack.add_alert("acme", stack.receiver.url, "--events", "failed,recovered")
    stack.procs.append(worker("worker", stack.env, stack.logs, queues="company,project,alerts"))
    data.configure("acme", permanent="bad_credentials")
    stack.sync_now()
    wait_until(lambda: stack.receiver.events() == ["failed"], 60, "no failed alert arrived")
    stack.sync_now()  # the same incident: no second alert
    data.configure("acme", permanent=None)
    stack.sync_now()
    wait_until(lambda: "recovered" in stack.receiver.events(), 60, "no recovered alert")
    wait_until(lambda: stack.client.llen(stack.keys.queue("alerts")) == 0, 30, "alerts queued")
    assert stack.receiver.events() == ["failed", "recovered"]
    first = stack.receiver.got[0]
    assert first.body["company"] == "acme" and first.body["kind"] == "vendors"
    assert first.body["status"] == "failed" and first.body["error"]
    expected = "sha256=" + hmac.new(SECRET.encode(), first.raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(first.header(SIGNATURE_HEADER) or "", expected)

    dead = stack.add_alert("acme", f"http://127.0.0.1:{closed_port()}/hook")
    data.configure("acme", permanent="bad_credentials")
    stack.sync_now()
    wait_until(
        lambda: any(
            e.alert == dead and e.outcome == "failed"
            for e in deliveries(stack.client, stack.keys, "acme")
        ),
        60,
        "the unreachable hook was never logged failed",
    )
    tried = sorted(
        (e.attempt, e.outcome)
        for e in deliveries(stack.client, stack.keys, "acme")
        if e.alert == dead
    )
    assert tried == [(1, "retrying"), (2, "retrying"), (3, "failed")]
    assert (
        next(e for e in deliveries(stack.client, stack.keys, "acme") if e.alert == hook).outcome
        == "delivered"
    )
    text = stack.manage("alert", "log", "acme") + stack.procs[0].output()
    assert SECRET not in text
    assert json.loads(stack.manage("alert", "list", "acme", "--json"))[0]["signed"] is True


def test_a_sync_that_never_succeeds_is_reported_stale_once(stack: Stack) -> None:
    env = {
        **stack.env,
        "ERP_SYNC_SECONDS_PER_HOUR": "1",
        "ERP_SYNC_ALERT_STALE_CHECK_SECONDS": "0.5",
    }
    stack.env = env
    small_company(stack.client, stack.keys, "acme", projects=())
    stack.manage(
        "settings",
        "set",
        "acme",
        "--as",
        "alice",
        "--no-refresh-jobs",
        "--no-sync-job-costs",
        "--no-sync-payments",
        "--no-wait",
    )
    stack.add_alert("acme", stack.receiver.url, "--events", "stale")
    # A beat dispatches, but no worker consumes the sync queues: nothing ever succeeds.
    stack.procs += [
        worker("alerts", env, stack.logs, queues="alerts"),
        beat("beat", env, stack.logs),
    ]
    wait_until(
        lambda: "stale" in stack.receiver.events(),
        60,
        f"no stale alert:\n{stack.procs[0].output()[-2000:]}",
    )
    stale = stack.receiver.got[0].body
    assert (stale["company"], stale["kind"], stale["status"]) == ("acme", "vendors", "stale")
    checks = stack.procs[0].output().count("tasks.alerts.check_stale")
    wait_until(
        lambda: stack.procs[0].output().count("tasks.alerts.check_stale") > checks + 4,
        30,
        "the stale check stopped running",
    )
    assert stack.receiver.events() == ["stale"]  # one alert for the incident
