"""Webhook delivery on a real ``celery worker``: a receiver redirecting to another origin, one
trickling its answer, one with its secret in the path, and a target the worker's operator does
not allow. Redirects are failed attempts with their status, the trickle is cut at the alert
timeout, a disallowed target is refused at delivery (never sent), and the worker's log shows
no URL secret. Every wait is on an observable condition; all traffic is on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from config.alerts import DeliveryEntry
from config.keys import KeySpace
from erp_sync.alerts.deliver import deliveries
from tests.support.erp import small_company
from tests.support.procs import stop_all, wait_until, worker
from tests.support.receiver import RawServer, Receiver, start_raw, start_receiver, trickle
from tests.support.redisproc import RedisServer
from tests.support.stack import ProcStack

pytestmark = [pytest.mark.integration, pytest.mark.processes]
DONE = re.compile(r"Task tasks\.company\.refresh_vendors\[(\S+)\] succeeded")


@dataclass
class Stack(ProcStack):
    hooks: list[Receiver] = field(default_factory=list)
    raw: list[RawServer] = field(default_factory=list)

    def add_alert(self, url: str) -> str:
        out = self.manage("alert", "add", "acme", "--as", "alice", "--url", url)
        return out.split("added alert ", 1)[1].split()[0]

    def logged(self) -> dict[str, DeliveryEntry]:
        return {e.alert: e for e in deliveries(self.client, self.keys, "acme")}


@pytest.fixture
def stack(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(
        env={
            "ERP_SYNC_REDIS_URL": redis_server.url,
            "ERP_SYNC_KEY_PREFIX": prefix,
            "ERP_SYNC_ALERT_ATTEMPTS": "1",
            "ERP_SYNC_ALERT_TIMEOUT_SECONDS": "1",
            "ERP_SYNC_SETTINGS_WAIT_SECONDS": "0",
            "ERP_SYNC_SECRET_KEY": Fernet.generate_key().decode(),
            # the admin's CLI may write rules anywhere on loopback ...
            "ERP_SYNC_OUTBOUND_ALLOW": "127.0.0.0/8",
        },
        client=redis_server.client(),
        keys=KeySpace(prefix),
        logs=tmp_path,
    )
    yield s
    stop_all(s.procs)
    for r in s.hooks:
        r.close()
    for raw in s.raw:
        raw.close()


def test_a_worker_refuses_redirects_trickles_and_disallowed_targets_and_logs_no_secret(
    stack: Stack,
) -> None:
    data = small_company(stack.client, stack.keys, "acme", projects=())
    redirecting, elsewhere, slack = start_receiver(), start_receiver(), start_receiver()
    slow = start_raw(trickle(0.2, 100))  # 20 s of answer under a 1 s timeout
    stack.hooks += [redirecting, elsewhere, slack]
    stack.raw.append(slow)
    redirecting.statuses, redirecting.location = [302], elsewhere.url
    ids = {
        "redirect": stack.add_alert(redirecting.url),
        "trickle": stack.add_alert(slow.url),
        "slack": stack.add_alert(slack.url + "/T000/B000/XXXXSECRET"),
        # ... the worker's operator allows only 127.0.0.1: this one is refused at delivery
        "disallowed": stack.add_alert("http://127.0.0.2:9/hook"),
    }
    env = {**stack.env, "ERP_SYNC_OUTBOUND_ALLOW": "127.0.0.1"}
    stack.procs.append(worker("worker", env, stack.logs, queues="company,project,alerts"))
    data.configure("acme", permanent="bad_credentials")
    stack.manage("sync-now", "acme", "vendors", "--as", "alice")
    wait_until(
        lambda: set(ids.values()) <= set(stack.logged()),
        90,
        f"not every alert was attempted:\n{stack.procs[0].output()[-3000:]}",
    )
    log = stack.logged()
    assert (log[ids["slack"]].outcome, log[ids["slack"]].status_code) == ("delivered", 200)
    assert (log[ids["redirect"]].outcome, log[ids["redirect"]].status_code) == ("failed", 302)
    assert log[ids["redirect"]].error == "HTTP 302: redirects are not followed"
    assert elsewhere.connections == 0 and elsewhere.got == []
    assert log[ids["trickle"]].outcome == "failed"
    assert log[ids["trickle"]].error == "timed out: no complete answer within 1s"
    wait_until(lambda: slow.hung_up == [True], 30, f"the trickle was not cut: {slow.hung_up}")
    refused = log[ids["disallowed"]]
    assert refused.outcome == "failed" and refused.status_code is None
    assert refused.error and "refused: 127.0.0.2 is an internal address (loopback)" in refused.error
    output = stack.procs[0].output()
    assert "XXXXSECRET" not in output and "T000" not in output
    assert stack.manage("alert", "list", "acme").count("/hook/***") == 1
