"""The Prometheus exporter, scraped over HTTP while a real beat and worker run."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.keys import KeySpace
from erp_sync.control.store import SettingsStore
from erp_sync.views.metrics import render
from tests.support.procs import ROOT, Proc, beat, process_env, stop_all, wait_until, worker
from tests.support.redisproc import RedisServer, free_port


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


@pytest.mark.integration
@pytest.mark.processes
def test_the_exporter_reports_the_leader_backlog_queues_and_last_runs(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    store = SettingsStore(redis_server.client(), KeySpace(prefix))
    store.add_company("acme", "xero")
    store.add_project("acme", "tower")
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECONDS_PER_HOUR": "1",
    }  # vendors every second, job costs every 2 s
    port = free_port()
    procs = [
        beat("beat", env, tmp_path),
        worker("w", env, tmp_path, concurrency=4),
        Proc(
            "exporter",
            [sys.executable, "manage.py", "metrics", "serve", "--port", str(port)],
            env,
            tmp_path,
        ),
    ]
    try:
        wait_until(
            lambda: all(
                f'erp_sync_last_run_timestamp_seconds{{kind="{kind}",'
                f'status="succeeded"}}' in scrape(port)
                for kind in ("vendors", "job_costs")
            ),
            60,
            "no succeeded vendors and job_costs runs were exported",
        )
        text = scrape(port)
        assert "erp_sync_up 1.0" in text
        leader = [line for line in text.splitlines() if line.startswith("erp_sync_beat_leader{")]
        assert leader and leader[0].endswith(" 1.0") and 'node=""' not in leader[0]
        assert 'erp_sync_queue_length{queue="project"}' in text
        assert "erp_sync_schedule_entries 4.0" in text
        dispatched = [
            line
            for line in text.splitlines()
            if line.startswith("erp_sync_dispatched_slots_total ")
        ]
        assert float(dispatched[0].split()[1]) > 0
        status = subprocess.run(
            [sys.executable, "manage.py", "status", "--json"],
            cwd=ROOT,
            env=process_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        last = json.loads(status.stdout)["last_runs"]["vendors"]["succeeded"]
        assert last["company"] == "acme" and last["finished_at"]
        finished = [
            line for line in procs[1].output().splitlines() if "finished company=acme" in line
        ]
        assert any(
            "sync=job_costs" in line
            and "project=tower" in line
            and "outcome=succeeded" in line
            and "duration_ms=" in line
            for line in finished
        )
    finally:
        stop_all(procs)


def test_a_scrape_with_redis_down_still_answers_with_up_0(keys: KeySpace) -> None:
    down = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    assert "erp_sync_up 0.0" in render(down, keys)
