"""The README's main command (scripts/run.sh runs ``scripts/devstack.py``) as a new user would meet
it, with real processes and a run directory of the test's own (``--run-dir``).

On an existing Redis, started in the background of a non-interactive shell (SIGINT ignored): the
banner only once a beat leads and Flower lists every worker, syncs of all four kinds, Flower
behind the printed password (which no process's command line shows), distinct remote-control
names, the ``alerts`` queue on a worker of its own (as in docker-compose.yml), loopback allowed
as an outbound target by an explicit setting, a live setting change, and SIGINT stopping
everything. On a private Redis: a second start
comes back on the same port with the same data and leaves an admin's change alone.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import pytest

from tests.support.procs import CELERY, ROOT, Proc, process_env, wait_until
from tests.support.redisproc import RedisServer, require_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.processes]
KINDS = {"vendors", "jobs", "job_costs", "payments"}
DEVSTACK = [sys.executable, str(ROOT / "scripts" / "devstack.py")]
BANNER = "Ctrl-C stops everything"
# As `scripts/run.sh &` in a script: a background job of a non-interactive shell starts with
# SIGINT ignored, and an exec'd program inherits that.
SIGINT_IGNORED = ["bash", "-c", 'trap "" INT; exec "$@"', "bash"]


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=process_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def gone(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1]
    except FileNotFoundError:
        return True


def stop(stack: Proc, sig: int, spawned: list[int]) -> None:
    """Stop the stack with ``sig``: it exits cleanly and none of its children outlives it."""
    stack.signal(sig)
    assert stack.popen.wait(60) == 0, stack.output()[-3000:]
    assert "stopped." in stack.output()
    for pid in spawned:
        wait_until(partial(gone, pid), 10, f"child {pid} outlived the stack")


def flower_get(port: str, path: str, auth: str | None) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        request.add_header("Authorization", f"Basic {base64.b64encode(auth.encode()).decode()}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def cmdlines() -> dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return found


def qbo_synced(env: dict[str, str], company: str) -> bool:
    """Whether a vendors sync of ``company`` succeeded (its history, as a user reads it)."""
    runs = json.loads(manage(env, "history", company, "--json", "--limit", "200").stdout or "[]")
    return any(r["kind"] == "vendors" and r["status"] == "succeeded" for r in runs)


def qbo_stats(url: str, realm: str) -> dict[str, int]:
    """The fake QuickBooks Online server's counters for ``realm`` (its admin API)."""
    with urllib.request.urlopen(f"{url}/_admin/realms/{realm}/stats", timeout=10) as response:
        stats: dict[str, int] = json.loads(response.read())
    return stats


def test_the_shell_prefix_starts_a_program_with_sigint_ignored() -> None:
    """The premise of the background test below: what the devstack has to overcome."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    out = subprocess.run(
        [*SIGINT_IGNORED, sys.executable, "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "True"


def test_the_main_command_runs_the_whole_stack_with_demo_data(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECONDS_PER_HOUR": "3",
    }
    run = tmp_path / "run"
    stack = Proc("devstack", [*SIGINT_IGNORED, *DEVSTACK, "--run-dir", str(run)], env, tmp_path)
    spawned: list[int] = []
    try:
        stack.wait_for(BANNER, 90)
        out = stack.output()
        assert "using the Redis at ERP_SYNC_REDIS_URL" in out
        assert (
            out.index("waiting for a beat to lead...")
            < out.index("waiting for Flower to list the workers")
            < out.index(BANNER)
        )
        spawned = children(stack.pid)
        # Two beats, three workers, Flower and the fake QBO server (Redis was already there).
        assert len(spawned) == 7

        # Ready when the banner says so: a beat of this stack leads, Flower lists both workers
        # without anyone asking it to refresh.
        banner = re.search(r"http://127\.0\.0\.1:(\d+)\s+user (\S+)\s+password (\S+)", out)
        assert banner is not None, out
        port, user, password = banner.groups()
        auth = f"{user}:{password}"
        leader = json.loads(manage(env, "status", "--json").stdout)["leader"]
        assert leader is not None and int(leader.split(":")[-2]) in spawned
        host = socket.gethostname()
        listed = flower_get(port, "/api/workers", auth)
        assert isinstance(listed, dict)
        assert {f"company@{host}", f"project@{host}", f"alerts@{host}"} <= set(listed)

        # The password works but shows on no command line (Flower reads it from its environment).
        with pytest.raises(urllib.error.HTTPError) as refused:
            flower_get(port, "/api/workers", None)
        assert refused.value.code == 401
        refused.value.close()
        showing = [pid for pid, cmd in cmdlines().items() if password.encode() in cmd]
        assert not showing, f"the Flower password is on the command line of {showing}"

        # Every Celery node answers remote control under a name of its own.
        ping = subprocess.run(
            [*CELERY, "inspect", "ping", "--json"],
            cwd=ROOT,
            env=process_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "DuplicateNodenameWarning" not in ping.stdout + ping.stderr
        names = {f"{n}@{host}" for n in ("beat-1", "beat-2", "company", "project", "alerts")}
        assert set(json.loads(ping.stdout)) == names
        # The alerts queue (webhooks, housekeeping) has a worker of its own, which runs no sync:
        # a slow webhook receiver never holds a sync's slot (tests/test_alert_isolation.py).
        active = subprocess.run(
            [*CELERY, "inspect", "active_queues", "--json"],
            cwd=ROOT,
            env=process_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        consumed = {
            node.split("@")[0]: sorted(q["name"] for q in queues)
            for node, queues in json.loads(active.stdout).items()
            if not node.startswith("beat-")
        }
        assert consumed == {"company": ["company"], "project": ["project"], "alerts": ["alerts"]}
        # Loopback targets (the fake QBO, a local webhook receiver) are allowed explicitly, in
        # every child's environment and in the printed export line, never by a product default.
        assert "ERP_SYNC_OUTBOUND_ALLOW=127.0.0.1,::1" in out
        for pid in spawned:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"ERP_SYNC_OUTBOUND_ALLOW=127.0.0.1,::1" in environ, pid

        def kinds_succeeded() -> set[str]:
            runs = json.loads(
                manage(env, "history", "demo-01", "--json", "--limit", "200").stdout or "[]"
            )
            return {r["kind"] for r in runs if r["status"] == "succeeded"}

        wait_until(
            lambda: kinds_succeeded() == KINDS,
            60,
            f"not all four kinds succeeded: {kinds_succeeded()}",
        )
        tasks = flower_get(port, "/api/tasks?limit=50", auth)
        assert isinstance(tasks, dict)
        assert any(t["name"] == "tasks.project.sync_job_costs" for t in tasks.values())

        changed = manage(
            env,
            "settings",
            "set",
            "demo-01",
            "--as",
            "demo-01-admin",
            "--no-refresh-jobs",
            "--json",
        )
        assert changed.returncode == 0 and "applied_ms" in json.loads(changed.stdout)
        shown = json.loads(manage(env, "schedule", "demo-01", "--json").stdout)
        assert "jobs" not in [e["kind"] for e in shown["entries"]]
        assert all(e["source"] == "beat" for e in shown["entries"])

        # The QuickBooks Online demo company syncs over HTTP with the fake the stack started,
        # its credentials sealed with a key the stack generated and kept private.
        qbo = re.search(
            r"demo-qbo: QuickBooks Online over HTTP at (http://127\.0\.0\.1:\d+)"
            r" \(a fake server, realm (\d+);",
            out,
        )
        assert qbo is not None, out
        qbo_url, realm = qbo.groups()
        key_file = run / "secret.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.read_text().strip() not in out
        assert "demo-qbo connected to quickbooks_online" in out
        wait_until(
            lambda: qbo_synced(env, "demo-qbo"), 60, "the vendors sync of demo-qbo never succeeded"
        )
        stats = qbo_stats(qbo_url, realm)
        assert stats["requests"] > 0 and stats["ok"] > 0 and stats["refreshes"] >= 1
        assert stats["throttled"] == 0
        shown_connection = manage(env, "connection", "show", "demo-qbo", "--json")
        assert json.loads(shown_connection.stdout)["base_url"] == qbo_url

        stop(stack, signal.SIGINT, spawned)
        logs = {p.name: p.read_text(errors="replace") for p in (run / "logs").glob("*.log")}
        assert {
            "beat-1.log",
            "beat-2.log",
            "worker-company.log",
            "worker-project.log",
            "worker-alerts.log",
            "flower.log",
            "fake-qbo.log",
        } <= set(logs)
        secret = key_file.read_text().strip()
        assert not [name for name, text in logs.items() if secret in text]
        assert not [name for name, text in logs.items() if "DuplicateNodenameWarning" in text]
    finally:
        stack.stop()
    assert redis_server.client().ping()  # an existing Redis is left alone


def test_a_second_start_keeps_the_private_redis_port_and_an_admins_change(
    prefix: str, tmp_path: Path
) -> None:
    require_redis_server()
    env = {"ERP_SYNC_KEY_PREFIX": prefix}  # no ERP_SYNC_REDIS_URL: the stack starts its own
    run = tmp_path / "run"

    def start(name: str) -> tuple[Proc, str, list[int]]:
        stack = Proc(name, [*DEVSTACK, "--run-dir", str(run)], env, tmp_path)
        try:
            stack.wait_for(BANNER, 90)
        except BaseException:
            stack.stop()
            raise
        started = re.search(r"started a private redis-server at (\S+)", stack.output())
        assert started is not None, stack.output()
        url = started.group(1)
        spawned = children(stack.pid)
        assert len(spawned) == 8  # Redis too
        return stack, url, spawned

    first, url, spawned = start("devstack-1")
    try:
        assert "seeding demo data" in first.output()
        assert "demo-qbo connected to quickbooks_online" in first.output()
        key = (run / "secret.key").read_text()
        port = url.rsplit(":", 1)[1].split("/")[0]
        assert (run / "redis" / "port").read_text().strip() == port
        # One stack per run directory: a second one refuses at once.
        again = subprocess.run(
            [*DEVSTACK, "--run-dir", str(run)],
            cwd=ROOT,
            env=process_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1 and "another devstack" in again.stderr
        at = {**env, "ERP_SYNC_REDIS_URL": url}
        assert (
            json.loads(manage(at, "settings", "show", "demo-01", "--json").stdout)["settings"][
                "payments_for_synced_invoices"
            ]
            == "hourly"
        )  # the first seeding's
        changed = manage(
            at,
            "settings",
            "set",
            "demo-01",
            "--as",
            "demo-01-admin",
            "--payments-frequency",
            "daily",
            "--no-sync-job-costs",
            "--json",
        )
        assert changed.returncode == 0, changed.stderr
        before = json.loads(manage(at, "settings", "show", "demo-01", "--json").stdout)
        stop(first, signal.SIGTERM, spawned)  # the private Redis among them
    finally:
        first.stop()

    second, url_again, spawned = start("devstack-2")
    try:
        assert url_again == url
        assert "demo data already there" in second.output()
        # The same key and the fake back on its port with its data: no second connect.
        assert (run / "secret.key").read_text() == key
        assert "demo-qbo connected" not in second.output()
        qbo = re.search(r"over HTTP at (\S+) \(a fake server, realm (\d+);", second.output())
        assert qbo is not None, second.output()
        # The fake's counters start at zero: requests now are this start's (a 401 for the
        # access token it no longer knows, a refresh with the refresh token it saved, reads).
        wait_until(
            lambda: qbo_stats(*qbo.groups())["ok"] > 0,
            60,
            "demo-qbo made no successful request after the restart",
        )
        after = json.loads(manage(at, "settings", "show", "demo-01", "--json").stdout)
        assert after == before
        assert after["settings"]["payments_for_synced_invoices"] == "daily"
        assert after["settings"]["sync_project_job_costs"] is False
        stop(second, signal.SIGINT, spawned)
    finally:
        second.stop()
