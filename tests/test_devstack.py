"""The README's main command (scripts/run.sh runs ``scripts/devstack.py``) as a new user
would meet it: demo data, syncs of all four kinds within a minute, Flower behind the printed
password, a setting change visible in ``schedule`` at once, and Ctrl-C (SIGTERM) stopping all."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.procs import ROOT, Proc, process_env, wait_until
from tests.support.redisproc import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.processes]
KINDS = {"vendors", "jobs", "job_costs", "payments"}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=process_env(env),
                          capture_output=True, text=True, timeout=60)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_the_main_command_runs_the_whole_stack_with_demo_data(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    env = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix,
           "ERP_SYNC_SECONDS_PER_HOUR": "3"}
    stack = Proc("devstack", [sys.executable, str(ROOT / "scripts" / "devstack.py")], env, tmp_path)
    try:
        stack.wait_for("Ctrl-C stops everything", 90)
        assert "using the Redis at ERP_SYNC_REDIS_URL" in stack.output()
        spawned = children(stack.pid)
        assert len(spawned) == 5  # two beats, two workers, Flower (Redis was already there)

        def kinds_succeeded() -> set[str]:
            runs = json.loads(manage(env, "history", "demo-01", "--json", "--limit", "200")
                              .stdout or "[]")
            return {r["kind"] for r in runs if r["status"] == "succeeded"}

        wait_until(lambda: kinds_succeeded() == KINDS, 60,
                   f"not all four kinds succeeded: {kinds_succeeded()}")

        port, user, password = re.search(  # type: ignore[union-attr]
            r"http://127\.0\.0\.1:(\d+)\s+user (\S+)\s+password (\S+)", stack.output()).groups()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks?limit=50")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert any(t["name"] == "tasks.project.sync_job_costs"
                       for t in json.loads(response.read()).values())

        changed = manage(env, "settings", "set", "demo-01", "--as", "demo-01-admin",
                         "--no-refresh-jobs", "--json")
        assert changed.returncode == 0 and "applied_ms" in json.loads(changed.stdout)
        shown = json.loads(manage(env, "schedule", "demo-01", "--json").stdout)
        assert "jobs" not in [e["kind"] for e in shown["entries"]]
        assert all(e["source"] == "beat" for e in shown["entries"])
    finally:
        stack.signal(signal.SIGTERM)
        stack.popen.wait(60)
        stack.stop()
    for pid in spawned:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or
                   "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], 30,
                   f"child {pid} outlived the stack")
    assert redis_server.client().ping()  # an existing Redis is left alone
