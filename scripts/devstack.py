"""The whole stack on one machine, for a first look: ``scripts/run.sh``.

Redis: ``ERP_SYNC_REDIS_URL`` when it is set and answers; otherwise a private ``redis-server``
(AOF on, ``noeviction``) in ``.run/redis`` on a free port. Then demo data, two beats (one leads),
a company worker, a project worker and Flower (basic auth, generated password), each logging to
``.run/logs/``. Ctrl-C stops everything, in reverse order. The hour is shrunk
(``ERP_SYNC_SECONDS_PER_HOUR``, default 10 here) so syncs visibly happen within a minute.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run"


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, ValueError):
        return False


def start_redis() -> tuple[str, subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("error: no Redis answers at ERP_SYNC_REDIS_URL and redis-server is not "
                 "installed (scripts/setup.sh installs it)")
    data = RUN / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port(6390)
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(data), "--appendonly", "yes", "--maxmemory-policy", "noeviction",
                             "--logfile", str(RUN / "logs" / "redis.log")])
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not answers(url):
        if time.monotonic() > deadline:
            sys.exit(f"error: private redis-server did not start; see {RUN / 'logs/redis.log'}")
        time.sleep(0.05)
    return url, proc


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def demo_payments_hourly(url: str, prefix: str) -> None:
    """Payments default to daily; in the demo they run hourly so all four syncs show up soon."""
    from config.keys import KeySpace
    from config.models import CAPABILITIES, SyncKind
    from erp_sync.store import SettingsStore

    store = SettingsStore(redis.Redis.from_url(url, decode_responses=True), KeySpace(prefix))
    for company in store.list_companies():
        if company.id.startswith("demo-") and SyncKind.PAYMENTS in CAPABILITIES[company.erp]:
            store.update_settings(company.id, f"{company.id}-admin",
                                  {"payments_for_synced_invoices": "hourly"})


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # stop the children on SIGTERM as on Ctrl-C
    (RUN / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("ERP_SYNC_SECONDS_PER_HOUR", "10")
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    configured = os.environ.get("ERP_SYNC_REDIS_URL")
    if configured and answers(configured):
        url = configured
        print(f"using the Redis at ERP_SYNC_REDIS_URL ({url.split('@')[-1]})")
    else:
        if configured:
            print("no Redis answers at ERP_SYNC_REDIS_URL; starting a private one")
        url, redis_proc = start_redis()
        procs.append(("redis", redis_proc))
        print(f"started a private redis-server at {url} (data in .run/redis)")
    env["ERP_SYNC_REDIS_URL"] = url
    env.pop("ERP_SYNC_BROKER_URL", None)
    py = sys.executable
    subprocess.run([py, "manage.py", "demo", "--companies", "4", "--projects", "3"], cwd=ROOT,
                   env=env, check=True)
    demo_payments_hourly(url, env.get("ERP_SYNC_KEY_PREFIX", "erp_sync"))
    user, password = "admin", secrets.token_urlsafe(12)
    flower_port = free_port(5555)
    celery = [py, "-m", "celery", "-A", "worker"]
    commands = {
        "beat-1": [*celery, "beat", "-l", "INFO"],
        "beat-2": [*celery, "beat", "-l", "INFO"],
        "worker-company": [*celery, "worker", "-Q", "company", "-P", "threads", "-c", "8",
                           "-n", "company@%h", "-l", "INFO", "-E"],
        "worker-project": [*celery, "worker", "-Q", "project", "-P", "threads", "-c", "8",
                           "-n", "project@%h", "-l", "INFO", "-E"],
        "flower": [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1",
                   f"--basic-auth={user}:{password}"],
    }
    for name, cmd in commands.items():
        log = (RUN / "logs" / f"{name}.log").open("ab")
        procs.append((name, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT)))
    hour = env["ERP_SYNC_SECONDS_PER_HOUR"]
    print(f"""
erp-sync is running (one schedule hour = {hour} s).
  Flower:  http://127.0.0.1:{flower_port}   user {user}   password {password}
  Logs:    .run/logs/*.log
  Try:     export ERP_SYNC_REDIS_URL={url} ERP_SYNC_SECONDS_PER_HOUR={hour}
           .venv/bin/erp-sync status
           .venv/bin/erp-sync schedule demo-01
           .venv/bin/erp-sync history demo-01
           .venv/bin/erp-sync settings set demo-01 --as demo-01-admin --payments-frequency hourly
Ctrl-C stops everything.""", flush=True)
    try:
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see .run/logs/{name}.log")
                    raise KeyboardInterrupt
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping...")
    finally:
        for _name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
