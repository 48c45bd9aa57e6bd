"""Slow webhook receivers never take the workers that run syncs (issue 19), on real processes.

The workers are laid out as docker-compose.yml deploys them (each worker service's ``-Q`` and
``-P``; smaller pools here): the ``alerts`` queue on a worker of its own. A loopback receiver
trickles its answer (a byte every 0.2 s, so no read timeout fires) and holds every delivery of a
failed sync until the test releases it; the alert timeout is at its maximum (60 s), so even an
attempt bounded as a whole stays held for the whole test. Meanwhile another company's vendors
sync is triggered (``sync-now``): it must run to the end while every slow delivery is still held.
On workers that also consume ``alerts`` (``-Q company,alerts``, the layout before) the held
deliveries fill the pool and the sync waits for one of them to end.

The figures (start delay with and without slow receivers, both layouts) are bench.alert_isolation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from config.keys import KeySpace
from erp_sync.runs.records import RunRecords
from tests.support.erp import small_company
from tests.support.procs import ROOT, stop_all, wait_until, worker
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs
from tests.support.stack import ProcStack
from tests.support.trickle import start_trickle_receiver

pytestmark = [pytest.mark.integration, pytest.mark.processes]
SLOTS = 2  # threads per worker: small pools, the same layout


def compose_workers() -> list[tuple[str, str, str]]:
    """(service, queues, pool) of every worker service of docker-compose.yml."""
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"
    ]
    found = []
    for name, service in services.items():
        argv = [str(a) for a in service.get("command") or []]
        if argv[:4] == ["celery", "-A", "worker", "worker"]:
            found.append((name, argv[argv.index("-Q") + 1], argv[argv.index("-P") + 1]))
    return found


def vendors_succeeded(stack: ProcStack, company: str) -> bool:
    return any(
        r.kind == "vendors" and r.status == "succeeded"
        for r in recent_runs(RunRecords(stack.client, stack.keys), company)
    )


def test_a_sync_runs_while_slow_webhook_receivers_hold_every_alerts_slot(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECRET_KEY": Fernet.generate_key().decode(),
        "ERP_SYNC_OUTBOUND_ALLOW": "127.0.0.1",  # the receiver is on loopback
        "ERP_SYNC_ALERT_TIMEOUT_SECONDS": "60",
        "ERP_SYNC_ALERT_ATTEMPTS": "1",
    }
    stack = ProcStack(env, redis_server.client(), KeySpace(prefix), tmp_path)
    small_company(stack.client, stack.keys, "acme", projects=())
    slow = small_company(stack.client, stack.keys, "slowco", projects=())
    receiver = start_trickle_receiver()
    try:
        for _ in range(SLOTS + 1):  # more slow deliveries than any pool has slots
            stack.manage(
                "alert",
                "add",
                "slowco",
                "--as",
                "alice",
                "--url",
                receiver.url,
                "--events",
                "failed",
            )
        layout = compose_workers()
        assert [q for _, q, _ in layout if "alerts" in q.split(",")] == ["alerts"]
        for name, queues, pool in layout:
            stack.procs.append(
                worker(name, env, tmp_path, queues=queues, pool=pool, concurrency=SLOTS)
            )
        for proc in stack.procs:
            proc.wait_for("ready.", 60)

        slow.configure("slowco", permanent="bad_credentials")
        stack.manage("sync-now", "slowco", "vendors", "--as", "alice")
        wait_until(
            lambda: receiver.held() >= SLOTS, 60, "the slow receiver never held a pool's worth"
        )
        stack.manage("sync-now", "acme", "vendors", "--as", "alice")
        wait_until(
            lambda: vendors_succeeded(stack, "acme"),
            45,  # under the 60 s alert timeout: a sync queued behind a held slot never runs
            "acme's vendors sync waited for a worker slot held by a slow webhook receiver",
        )
        # It ran and ended while every slow delivery was still being answered.
        assert receiver.ended() == 0 and receiver.held() >= SLOTS
    finally:
        receiver.release()
        stop_all(stack.procs)
        receiver.close()
