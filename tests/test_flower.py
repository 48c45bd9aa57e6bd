"""Real Flower over HTTP, with basic auth, watching a real beat and real workers."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from config.keys import KeySpace
from erp_sync.control.store import SettingsStore
from tests.support.procs import CELERY, Proc, beat, stop_all, wait_until, worker
from tests.support.redisproc import RedisServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.processes]
USER, PASSWORD = "ops", "s3cret-pass"


def get(url: str, auth: bool = True) -> Any:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_flower_shows_the_workers_and_all_four_syncs_with_readable_arguments(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    store = SettingsStore(redis_server.client(), KeySpace(prefix))
    store.add_company("acme", "xero")
    store.add_project("acme", "tower")
    store.grant("acme", "al", "admin")
    store.update_settings("acme", "al", {"payments_for_synced_invoices": "hourly"})
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECONDS_PER_HOUR": "1",
    }  # every sync runs within 2 s, and again
    port = free_port()
    procs = [
        worker("company", env, tmp_path, queues="company", concurrency=2),
        worker("project", env, tmp_path, queues="project", concurrency=2),
        Proc(
            "flower",
            [
                *CELERY,
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
                f"--basic-auth={USER}:{PASSWORD}",
            ],
            env,
            tmp_path,
        ),
        # Started with the rest: runs before Flower listens are missed, but each sync runs
        # again every period (a task Flower saw only half of has no name and is skipped below).
        beat("beat", env, tmp_path),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(base), 60, "flower did not come up")
        names = {
            "tasks.company.refresh_vendors",
            "tasks.company.refresh_jobs",
            "tasks.project.sync_job_costs",
            "tasks.project.sync_invoice_payments",
        }
        wait_until(
            lambda: names <= {t["name"] for t in _tasks(base)},
            90,
            "flower never showed all four syncs",
        )
        # Beat queues its messages itself, yet Flower knows them from the moment they are sent.
        # (A deferral re-sends through Celery's retry, with retries >= 1: not what is checked.)
        wait_until(
            lambda: any(
                t.get("sent") and not t.get("retries")
                for t in _tasks(base)
                if str(t.get("uuid", "")).startswith("sync:acme:")
            ),
            30,
            "flower never saw a task-sent event from beat",
        )
        for task in _tasks(base):
            if task["name"] not in names:
                continue
            assert "'company': 'acme'" in task["kwargs"] and "'slot': '20" in task["kwargs"]
            assert ("'project': 'tower'" in task["kwargs"]) == task["name"].startswith(
                "tasks.project."
            )
            assert task["uuid"].startswith("sync:acme:")
        # A refresh is a broadcast with a short reply timeout: on a busy machine one worker's
        # reply can miss a round and come with the next, so wait for both to be listed.
        wait_until(
            lambda: (
                {w.split("@")[0] for w in get(f"{base}/api/workers?refresh=1")}
                == {"company", "project"}
            ),
            30,
            "flower never listed both workers",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(f"{base}/api/workers", auth=False)
        assert refused.value.code == 401
        refused.value.close()
    finally:
        stop_all(procs)


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthcheck", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


def _tasks(base: str) -> list[dict[str, Any]]:
    return list(get(f"{base}/api/tasks?limit=200").values())
