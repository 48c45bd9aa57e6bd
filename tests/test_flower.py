"""Real Flower over HTTP, with basic auth, watching a real beat and real workers; and the app's
Flower refusing to start without a login (unless ERP_SYNC_FLOWER_ALLOW_OPEN), with /metrics
behind the same login as its pages (erp_sync/infra/flower_guard.py)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from config.keys import KeySpace
from erp_sync.control.store import SettingsStore
from erp_sync.infra.flower_guard import login_problem
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


def request(port: int, path: str, auth: str | None = None) -> int:
    """The status of GET ``path`` (redirects not followed: an OAuth login goes elsewhere)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return int(response.status)
    finally:
        conn.close()


def start_flower(
    redis_server: RedisServer, prefix: str, tmp_path: Path, name: str, *args: str, **env: str
) -> tuple[Proc, int]:
    """``celery -A worker flower`` on a free loopback port, with only ``env`` as FLOWER_*."""
    port = free_port()
    settings = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix, **env}
    proc = Proc(
        name,
        [*CELERY, "flower", f"--port={port}", "--address=127.0.0.1", *args],
        settings,
        tmp_path,
    )
    return proc, port


def started_or_exited(proc: Proc, port: int) -> bool:
    """Flower answered its health check, or the process ended (whichever comes first)."""
    if not proc.alive():
        return True
    try:
        return request(port, "/healthcheck") == 200
    except OSError:
        return False


def test_flower_without_a_login_refuses_to_start_with_one_line(
    redis_server: RedisServer, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("FLOWER_")]:
        monkeypatch.delenv(name)  # Flower reads every FLOWER_* variable it knows
    proc, port = start_flower(redis_server, prefix, tmp_path, "flower-open")
    try:
        wait_until(lambda: started_or_exited(proc, port), 60, "flower neither started nor exited")
        assert not proc.alive(), "flower started with no login"
        assert proc.popen.wait(10) != 0
        lines = [line for line in proc.output().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("flower not started: no login configured")
        assert "FLOWER_BASIC_AUTH" in lines[0] and "ERP_SYNC_FLOWER_ALLOW_OPEN" in lines[0]
        with pytest.raises(OSError):
            request(port, "/healthcheck")  # it never listened
    finally:
        proc.stop()


def test_a_basic_auth_entry_without_a_user_or_a_password_is_a_login_problem() -> None:
    for entry in ("ops", "ops:", ":s3cret-pass", "ops:s3cret-pass,viewer"):
        assert login_problem(entry.split(","), None), entry
    assert login_problem(["ops:s3cret-pass", "viewer:pw"], None) is None


@pytest.mark.parametrize("entry", ["ops:", "ops:s3cret-pass,viewer"])  # the rest: just above
def test_flower_refuses_a_basic_auth_entry_without_a_user_or_a_password(
    redis_server: RedisServer, prefix: str, tmp_path: Path, entry: str
) -> None:
    # Even when open starts are allowed: a login with no password is a typo, not a choice.
    proc, port = start_flower(
        redis_server,
        prefix,
        tmp_path,
        "flower-typo",
        FLOWER_BASIC_AUTH=entry,
        ERP_SYNC_FLOWER_ALLOW_OPEN="true",
    )
    try:
        wait_until(lambda: started_or_exited(proc, port), 60, "flower neither started nor exited")
        assert not proc.alive() and proc.popen.wait(10) != 0
        lines = [line for line in proc.output().splitlines() if line.strip()]
        assert lines == [
            "flower not started: FLOWER_BASIC_AUTH (or --basic-auth) must be "
            "user:password[,user:password], each with a user and a password"
        ]
    finally:
        proc.stop()


def test_flower_starts_open_only_when_the_operator_allows_it_and_says_so(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    proc, port = start_flower(
        redis_server, prefix, tmp_path, "flower-allowed", ERP_SYNC_FLOWER_ALLOW_OPEN="true"
    )
    try:
        wait_until(lambda: started_or_exited(proc, port), 60, "flower neither started nor exited")
        assert proc.alive(), proc.output()
        assert request(port, "/") == 200 and request(port, "/metrics") == 200
        assert "Flower starts with no login (ERP_SYNC_FLOWER_ALLOW_OPEN=true)" in proc.output()
    finally:
        proc.stop()


@pytest.mark.parametrize("where", ["environment", "command line"])
def test_with_basic_auth_the_pages_and_metrics_answer_401_without_credentials_200_with(
    redis_server: RedisServer, prefix: str, tmp_path: Path, where: str
) -> None:
    login = f"{USER}:{PASSWORD}"
    if where == "environment":
        proc, port = start_flower(redis_server, prefix, tmp_path, "flower", FLOWER_BASIC_AUTH=login)
    else:
        proc, port = start_flower(redis_server, prefix, tmp_path, "flower", f"--basic-auth={login}")
    try:
        wait_until(lambda: started_or_exited(proc, port), 60, "flower neither started nor exited")
        assert proc.alive(), proc.output()
        for path in ("/", "/metrics", "/api/workers"):
            assert request(port, path) == 401, path
            assert request(port, path, f"{USER}:wrong") == 401, path
            assert request(port, path, login) == 200, path
        # The health check (compose's, devstack's) says only "OK" and needs no login.
        assert request(port, "/healthcheck") == 200
        assert PASSWORD not in proc.output()
    finally:
        proc.stop()


def test_with_oauth_metrics_is_behind_the_login_too(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    proc, port = start_flower(
        redis_server,
        prefix,
        tmp_path,
        "flower-oauth",
        r"--auth=.*@example\.com",
        FLOWER_OAUTH2_KEY="key",
        FLOWER_OAUTH2_SECRET="secret",
        FLOWER_OAUTH2_REDIRECT_URI="http://127.0.0.1/login",
    )
    try:
        wait_until(lambda: started_or_exited(proc, port), 60, "flower neither started nor exited")
        assert proc.alive(), proc.output()
        # No session cookie: both send the browser to the login page instead of answering.
        assert request(port, "/") == 302
        assert request(port, "/metrics") == 302
    finally:
        proc.stop()


def test_a_worker_is_not_affected_by_the_flower_check(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    env = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix}
    proc = worker("plain", env, tmp_path, queues="company", concurrency=1)
    try:
        proc.wait_for("ready.", 60)
        assert "flower not started" not in proc.output()
    finally:
        proc.stop()
