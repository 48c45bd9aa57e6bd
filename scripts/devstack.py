"""The whole stack on one machine, for a first look: ``scripts/run.sh [--run-dir DIR]``.

Redis: ``ERP_SYNC_REDIS_URL`` when it is set and answers; otherwise a private ``redis-server``
(AOF on, ``noeviction``) with its data in ``<run-dir>/redis`` (``.run`` by default). Its port is
remembered in ``<run-dir>/redis/port`` and reused while free, so a second start comes back on the
same URL with the same data. The database is ``ERP_SYNC_DATABASE_URL`` or an SQLite file in the
run directory (``<run-dir>/erp_sync.db``), migrated before anything starts. Demo data is seeded
once (companies ``demo-01`` to ``demo-04``, with
payments hourly so all four syncs show up soon); when they exist, they are left exactly as their
admins set them. One more company, ``demo-qbo`` on QuickBooks Online, is connected (with the
CLI's ``connect``, once; again when the fake moved to another port or needs a reconnect) to a
fake QuickBooks Online server the stack starts as a child (``tests.support.fake_qbo``: ~200
vendors, 3 projects with bills and payments, its port kept in ``<run-dir>/fake-qbo/port``, its
data saved there at a clean stop), so its syncs are real HTTP next to the sandbox ones. ERP
credentials are encrypted with ``ERP_SYNC_SECRET_KEY``; when it is unset, a key is generated
once into ``<run-dir>/secret.key`` (mode 0600, never printed) and handed to the children in
their environment. Then two beats (remote-control names ``beat-1@<host>``, ``beat-2@<host>``; one
leads), a company, a project and an alerts worker (the ``alerts`` queue, webhooks and
housekeeping, on a worker of its own as in docker-compose.yml: a webhook receiver that answers
slowly holds only its slots, never a sync's), and Flower (basic auth with a generated password,
handed over in Flower's environment so it never shows in ``ps``), each logging to
``<run-dir>/logs/<name>.log``. The hour is shrunk (``ERP_SYNC_SECONDS_PER_HOUR``, default 10 here)
so syncs visibly happen within a minute. Webhook and ERP targets on internal addresses are
refused unless ``ERP_SYNC_OUTBOUND_ALLOW`` names them; the demo's fake QuickBooks Online server
and a webhook receiver you run yourself are on loopback, so the stack sets it to ``127.0.0.1,::1``
when it is unset (an explicit opt-in, shown in the banner's ``export`` line; never a default
of the product).

The banner ("erp-sync is running ...") comes once the stack is ready: a beat of this stack holds
the lease and Flower lists every worker. A component that is not ready within ``--ready-timeout``
seconds (60) fails the start with one line naming its log, and everything started is stopped.

Stopping: Ctrl-C (SIGINT), SIGTERM or SIGHUP. The handlers are installed explicitly, so SIGINT
works even when the script was started in the background of a non-interactive shell (which starts
it with SIGINT ignored). Each child runs in a session of its own, so a terminal Ctrl-C reaches only
this script, which stops the children in reverse order of start: Flower, the workers and the beats
(SIGTERM, waiting for all of them), then Redis. A second signal while stopping kills what is left;
on Linux a child also gets SIGTERM should this script die without cleaning up. One run directory
serves one stack at a time (a lock file, ``<run-dir>/devstack.lock``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DEMO_COMPANIES, DEMO_PROJECTS = 4, 3
# The workers, as docker-compose.yml lays them out: name, queues, remote-control name, threads.
WORKERS = (
    ("worker-company", "company", "company@%h", 8),
    ("worker-project", "project", "project@%h", 8),
    ("worker-alerts", "alerts", "alerts@%h", 4),
)
# The demo's internal targets (the fake QuickBooks Online server, a local webhook receiver).
LOOPBACK_ALLOW = "127.0.0.1,::1"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StackFailed(Exception):
    """A component did not come up, or died; the message says which and names its log."""


class Stopped(Exception):
    """A stop signal arrived (Ctrl-C, SIGTERM or SIGHUP)."""


class Signals:
    """Stop signals, counted by a handler and acted on between steps, never mid-step."""

    def __init__(self) -> None:
        self.received = 0

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            # Explicitly, also for SIGINT: a background job of a non-interactive shell inherits
            # SIGINT ignored, and Python then leaves it ignored.
            signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        self.received += 1

    def check(self) -> None:
        if self.received:
            raise Stopped


def shown(path: Path) -> str:
    """``path`` relative to the repo when it is inside it (as a user types it), else absolute."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # As redis-server binds: a port whose old connections linger in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(preferred: int) -> int:
    if port_is_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, ValueError):
        return False


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


class Child:
    """One process of the stack, in a session of its own, logging to ``<logs>/<name>.log``."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # it leads its own group: its children too
            self.proc.wait()


class Stack:
    def __init__(self, run: Path, signals: Signals) -> None:
        self.run, self.logs, self.signals = run, run / "logs", signals
        self.children: list[Child] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Child:
        child = Child(name, cmd, env, self.logs / f"{name}.log")
        self.children.append(child)
        return child

    def check_children(self) -> None:
        for child in self.children:
            if not child.alive():
                raise StackFailed(
                    f"{child.name} exited with code {child.proc.returncode}; see {shown(child.log)}"
                )

    def wait_ready(
        self, what: str, failed: str, blame: Callable[[], str | None], timeout: float
    ) -> None:
        """Poll ``blame`` (``None`` once ready, else the log to look at) for up to ``timeout``."""
        print(f"waiting for {what}...", flush=True)
        deadline = time.monotonic() + timeout
        while True:
            self.signals.check()
            self.check_children()
            culprit = blame()
            if culprit is None:
                return
            if time.monotonic() > deadline:
                raise StackFailed(f"{failed} within {timeout:g} s; see {culprit}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Reverse order of start: the Celery processes together, then Redis (they need it)."""
        celery = [c for c in reversed(self.children) if c.name != "redis"]
        for tier in (celery, [c for c in self.children if c.name == "redis"]):
            seen = self.signals.received
            for child in tier:
                child.terminate()
            deadline = time.monotonic() + 30
            for child in tier:
                while child.alive() and time.monotonic() < deadline:
                    if self.signals.received > seen:  # asked again: do not wait any longer
                        break
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.proc.wait(0.1)
                if child.alive():
                    print(f"killing {child.name}", flush=True)
                    child.kill()


def lock_run_dir(run: Path) -> IO[str]:
    """Hold ``<run>/devstack.lock`` while running: one stack per run directory."""
    handle = (run / "devstack.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = handle.read().strip() or "?"
        handle.close()
        raise StackFailed(
            f"another devstack (pid {other}) is running with {shown(run)}; stop it first"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def redis_dir_of(url: str) -> str | None:
    """The data directory of the Redis at ``url``, ``None`` when it does not answer."""
    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=1, socket_timeout=2, decode_responses=True
        ) as client:
            return str(client.config_get("dir").get("dir", ""))
    except (redis.RedisError, ValueError):
        return None


def start_redis(stack: Stack) -> tuple[str, Child]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackFailed(
            "no Redis answers at ERP_SYNC_REDIS_URL and redis-server is not "
            "installed (scripts/setup.sh installs it)"
        )
    data = stack.run / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port_file = data / "port"
    try:
        remembered: int | None = int(port_file.read_text().strip())
    except (OSError, ValueError):
        remembered = None
    if remembered is not None:
        running = redis_dir_of(f"redis://{HOST}:{remembered}/0")
        if running is not None and Path(running).resolve() == data.resolve():
            raise StackFailed(
                f"a redis-server with the data in {shown(data)} is still running on "
                f"port {remembered} (left from an earlier start); stop it with "
                f"`redis-cli -p {remembered} shutdown` and start again"
            )
    port = free_port(remembered or 6390)
    if remembered is not None and port != remembered:
        print(f"port {remembered} (used last time) is taken; the private Redis moves to {port}")
    log = stack.logs / "redis.log"
    child = stack.start(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(log),
        ],
        dict(os.environ),
    )
    url = f"redis://{HOST}:{port}/0"
    deadline = time.monotonic() + 10
    while not answers(url):
        stack.signals.check()
        if not child.alive() or time.monotonic() > deadline:
            raise StackFailed(f"the private redis-server did not start; see {shown(log)}")
        time.sleep(0.05)
    port_file.write_text(f"{port}\n")
    return url, child


def migrate(py: str, env: dict[str, str]) -> None:
    """Create or migrate the database's schema (workers refuse a schema that is behind)."""
    done = subprocess.run(
        [py, "manage.py", "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise StackFailed(f"`manage.py db upgrade` failed: {done.stderr.strip() or done.stdout}")
    print(done.stdout.strip(), flush=True)


def seed_demo(py: str, env: dict[str, str], url: str, prefix: str, signals: Signals) -> None:
    """Seed the demo companies that are missing; existing ones are left as their admins set them.

    Payments default to daily; a newly seeded demo company gets them hourly so all four syncs
    show up soon. Only then: later starts never rewrite a setting.
    """
    from config.keys import KeySpace
    from config.models import CAPABILITIES, SyncKind
    from erp_sync.control.store import SettingsStore

    wanted = {f"demo-{n:02d}" for n in range(1, DEMO_COMPANIES + 1)}
    with redis.Redis.from_url(url, decode_responses=True) as client:
        store = SettingsStore(client, KeySpace(prefix))
        missing = wanted - set(store.company_ids())
        if not missing:
            print(f"demo data already there ({', '.join(sorted(wanted))}); left as it is")
            return
        print(f"seeding demo data ({', '.join(sorted(missing))})...", flush=True)
        done = subprocess.run(
            [
                py,
                "manage.py",
                "demo",
                "--companies",
                str(DEMO_COMPANIES),
                "--projects",
                str(DEMO_PROJECTS),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        signals.check()
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise StackFailed(f"`manage.py demo` failed with code {done.returncode} (output above)")
        for company in store.list_companies():
            if company.id in missing and SyncKind.PAYMENTS in CAPABILITIES[company.erp]:
                store.update_settings(
                    company.id, f"{company.id}-admin", {"payments_for_synced_invoices": "hourly"}
                )


# --- the QuickBooks Online demo company, on a fake QuickBooks Online server -----------------
QBO_COMPANY, QBO_ADMIN = "demo-qbo", "demo-qbo-admin"
QBO_REALM, QBO_CLIENT_ID = "9341453050000001", "demo-qbo-client"
QBO_PORT = 8790  # preferred; the port used last time is kept in <run-dir>/fake-qbo/port
# ~200 vendors, 3 projects with bills, expenses, a vendor credit and payments; no latency.
QBO_SEED = {
    "vendors": 200,
    "projects": 3,
    "bills_per_project": 4,
    "lines_per_bill": 2,
    "purchases_per_project": 2,
    "vendor_credits_per_project": 1,
    "payments_per_project": 2,
}


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read (created 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{text}\n")
    os.chmod(path, 0o600)


def read_or_make_private(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in ``path`` (made 0600 on the first start), so a restart reuses it."""
    try:
        value = path.read_text().strip()
    except OSError:
        value = ""
    if not value:
        value = make()
        write_private(path, value)
    return value


def secret_key(run: Path, env: dict[str, str]) -> str:
    """Where ERP credentials' key comes from: ERP_SYNC_SECRET_KEY, else ``<run>/secret.key``."""
    if env.get("ERP_SYNC_SECRET_KEY"):
        return "ERP_SYNC_SECRET_KEY"
    from erp_sync.control.vault import new_key

    env["ERP_SYNC_SECRET_KEY"] = read_or_make_private(run / "secret.key", new_key)
    return shown(run / "secret.key")


def admin_call(
    base: str, method: str, path: str, body: dict[str, object] | None = None
) -> tuple[int, dict[str, object]]:
    """One call to the fake's ``/_admin/`` API: (status, JSON answer)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}/_admin{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")


def start_fake_qbo(stack: Stack, py: str, env: dict[str, str], timeout: float) -> tuple[str, Child]:
    """The fake QuickBooks Online server (``tests.support.fake_qbo``) as a child: its port kept
    in ``<run>/fake-qbo/port`` and reused while free, its companies saved at a clean stop
    (``--state``) so a restart serves the same data and refresh token."""
    data = stack.run / "fake-qbo"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)  # the fake's saved state holds its (demo) client secret and tokens
    port_file = data / "port"
    try:
        remembered: int | None = int(port_file.read_text().strip())
    except (OSError, ValueError):
        remembered = None
    port = free_port(remembered or QBO_PORT)
    ready = data / "listening"
    ready.unlink(missing_ok=True)
    child = stack.start(
        "fake-qbo",
        [
            py,
            "-m",
            "tests.support.fake_qbo",
            "--port",
            str(port),
            "--host",
            HOST,
            "--port-file",
            str(ready),
            "--state",
            str(data / "state.json"),
        ],
        env,
    )
    base = f"http://{HOST}:{port}"

    def blame() -> str | None:
        if not ready.exists():
            return shown(child.log)
        try:
            return None if admin_call(base, "GET", "/health")[0] == 200 else shown(child.log)
        except (OSError, ValueError):
            return shown(child.log)

    stack.wait_ready(
        "the fake QuickBooks Online server",
        "the fake QuickBooks Online server did not answer",
        blame,
        timeout,
    )
    port_file.write_text(f"{port}\n")
    return base, child


def connect_qbo_demo(
    py: str, env: dict[str, str], url: str, prefix: str, run: Path, base: str
) -> None:
    """The demo-qbo company on quickbooks_online, connected to the fake with the CLI.

    The realm is made once (the fake keeps it across clean restarts); the company once; the
    connection once, and again when the fake moved to another port or the connection needs a
    reconnect (the fake lost its state, or a refresh token was refused): then with the refresh
    token the fake holds live, read from its admin API.
    """
    from config.keys import KeySpace
    from config.models import CAPABILITIES, SyncKind
    from erp_sync.control.connections import ConnectionStore
    from erp_sync.control.store import SettingsStore
    from erp_sync.errors import NotFound

    secrets_dir = run / "fake-qbo"
    client_secret = read_or_make_private(
        secrets_dir / "client_secret", lambda: secrets.token_urlsafe(24)
    )
    status, realm = admin_call(base, "GET", f"/realms/{QBO_REALM}")
    if status == 404:
        print("seeding the fake QuickBooks Online company...", flush=True)
        status, realm = admin_call(
            base,
            "POST",
            "/realms",
            {
                "realm_id": QBO_REALM,
                "client_id": QBO_CLIENT_ID,
                "client_secret": client_secret,
                "refresh_token": f"rt-{secrets.token_urlsafe(18)}",
                "seed": QBO_SEED,
            },
        )
        if status != 201:
            raise StackFailed(
                f"the fake QuickBooks Online server refused the demo company: {realm.get('error')}"
            )
        status, realm = admin_call(base, "GET", f"/realms/{QBO_REALM}")
    if status != 200:
        raise StackFailed(
            f"the fake QuickBooks Online server answered {status} for the demo company"
        )
    with redis.Redis.from_url(url, decode_responses=True) as client:
        keys = KeySpace(prefix)
        store = SettingsStore(client, keys)
        try:
            store.get_company(QBO_COMPANY)
        except NotFound:
            store.add_company(QBO_COMPANY, "quickbooks_online", name="Demo Builders (QBO)")
            store.grant(QBO_COMPANY, QBO_ADMIN, "admin")
            # The fake's projects are Customers 2-4 (Customer 1 is their parent): linked here
            # as a Procore project is linked to its ERP job.
            for n in range(QBO_SEED["projects"]):
                store.add_project(QBO_COMPANY, str(2 + n), name=f"QBO project {n + 1}")
            if SyncKind.PAYMENTS in CAPABILITIES[store.get_company(QBO_COMPANY).erp]:
                store.update_settings(
                    QBO_COMPANY, QBO_ADMIN, {"payments_for_synced_invoices": "hourly"}
                )
        connection = ConnectionStore(client, keys).get(QBO_COMPANY)
    if connection is not None and connection.base_url == base and connection.status == "connected":
        return
    live = realm.get("refresh_token")
    if not isinstance(live, str) or not live:
        raise StackFailed("the fake QuickBooks Online company has no live refresh token")
    token_file = secrets_dir / "refresh_token"
    write_private(token_file, live)
    done = subprocess.run(
        [
            py,
            "manage.py",
            "connect",
            QBO_COMPANY,
            "--as",
            QBO_ADMIN,
            "--erp",
            "quickbooks_online",
            "--realm-id",
            QBO_REALM,
            "--client-id",
            QBO_CLIENT_ID,
            "--client-secret-file",
            str(secrets_dir / "client_secret"),
            "--refresh-token-file",
            str(token_file),
            "--base-url",
            base,
            "--token-url",
            f"{base}/oauth2/v1/tokens/bearer",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    token_file.unlink(missing_ok=True)  # the connection holds it now (encrypted)
    if done.returncode != 0:
        raise StackFailed(
            f"`manage.py connect {QBO_COMPANY}` failed: "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    print(done.stdout.strip(), flush=True)


def leader_blame(url: str, prefix: str, beats: list[Child]) -> Callable[[], str | None]:
    from config.keys import KeySpace
    from erp_sync.beat.engine import pid_of
    from erp_sync.beat.lease import holder_node

    keys, pids = KeySpace(prefix), {b.pid for b in beats}
    logs = " and ".join(shown(b.log) for b in beats)

    def blame() -> str | None:
        # The lease as `erp-sync status` reads it (erp_sync.views.status.fleet_status's "leader").
        try:
            with redis.Redis.from_url(url, decode_responses=True, socket_timeout=5) as client:
                leader = holder_node(client.get(keys.beat_leader))
        except redis.RedisError:
            return logs
        # Ours, not a lease a killed stack left behind (it expires within the lease TTL).
        try:
            ours = leader is not None and pid_of(leader) in pids
        except (ValueError, IndexError):  # a node id of another making: not one of ours
            ours = False
        return None if ours else logs

    return blame


def flower_blame(
    port: int, auth: str, workers: dict[str, Child], flower: Child
) -> Callable[[], str | None]:
    token = base64.b64encode(auth.encode()).decode()

    def blame() -> str | None:
        # refresh=1: Flower inspects the workers now (without it /api/workers stays empty
        # until someone refreshes the page).
        request = urllib.request.Request(
            f"http://{HOST}:{port}/api/workers?refresh=1",
            headers={"Authorization": f"Basic {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                listed = set(json.loads(response.read()))
        except (OSError, ValueError):
            return shown(flower.log)
        missing = [child for name, child in workers.items() if name not in listed]
        return " and ".join(shown(c.log) for c in missing) if missing else None

    return blame


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the whole erp-sync stack on this machine.")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=ROOT / ".run",
        metavar="DIR",
        help="where the private Redis keeps its data and port, and the logs "
        "go (default: .run in the repo)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long each component may take to become ready (default: 60)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signals = Signals()
    signals.install()
    run: Path = args.run_dir.resolve()
    stack = Stack(run, signals)
    try:
        stack.logs.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(run)
    except (StackFailed, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    error = None
    try:
        return run_stack(stack, args.ready_timeout)
    except Stopped:
        print("\nstopping... (again to kill what is left)", flush=True)
        return 0
    except StackFailed as exc:
        error = f"error: {exc}"
        return 1
    finally:
        stack.stop()
        if stack.children:
            print("stopped.", flush=True)
        lock.close()
        if error:  # the last line, where it is seen
            print(error, file=sys.stderr, flush=True)


def run_stack(stack: Stack, ready_timeout: float) -> int:
    from celery.utils.nodenames import host_format

    from config.env import get_settings
    from config.errors import ConfigError
    from erp_sync.db.engine import mask

    try:
        prefix = get_settings().key_prefix  # a misspelt ERP_SYNC_* name fails here, not later
    except ConfigError as exc:
        raise StackFailed(str(exc)) from None
    env = dict(os.environ)
    env.setdefault("ERP_SYNC_SECONDS_PER_HOUR", "10")
    env.setdefault("ERP_SYNC_OUTBOUND_ALLOW", LOOPBACK_ALLOW)
    env["PYTHONUNBUFFERED"] = "1"
    configured = os.environ.get("ERP_SYNC_REDIS_URL")
    if configured and answers(configured):
        url = configured
        redis_line = f"{url.split('@')[-1]} (ERP_SYNC_REDIS_URL)"
        print(f"using the Redis at ERP_SYNC_REDIS_URL ({url.split('@')[-1]})")
    else:
        if configured:
            print("no Redis answers at ERP_SYNC_REDIS_URL; starting a private one")
        url, _redis = start_redis(stack)
        data = shown(stack.run / "redis")
        redis_line = f"{url} (private; data and port kept in {data})"
        print(f"started a private redis-server at {url} (data in {data})", flush=True)
    env["ERP_SYNC_REDIS_URL"] = url
    env.pop("ERP_SYNC_BROKER_URL", None)
    # The database: ERP_SYNC_DATABASE_URL, or an SQLite file kept in the run directory.
    env.setdefault("ERP_SYNC_DATABASE_URL", f"sqlite:///{(stack.run / 'erp_sync.db').resolve()}")
    py = sys.executable
    migrate(py, env)
    seed_demo(py, env, url, prefix, stack.signals)
    key_source = secret_key(stack.run, env)
    qbo_env = {k: v for k, v in env.items() if k != "ERP_SYNC_SECRET_KEY"}
    qbo_url, qbo = start_fake_qbo(stack, py, qbo_env, ready_timeout)
    connect_qbo_demo(py, env, url, prefix, stack.run, qbo_url)

    user, password = "admin", secrets.token_urlsafe(12)
    flower_port = free_port(5555)
    celery = [py, "-m", "celery", "-A", "worker"]
    beats = [
        stack.start(name, [*celery, "beat", "-n", f"{name}@%h", "-l", "INFO"], env)
        for name in ("beat-1", "beat-2")
    ]
    workers = {
        host_format(node): stack.start(
            name,
            [
                *celery,
                "worker",
                "-Q",
                queues,
                "-P",
                "threads",
                "-c",
                str(threads),
                "-n",
                node,
                "-l",
                "INFO",
                "-E",
            ],
            env,
        )
        for name, queues, node, threads in WORKERS
    }
    # The password goes in Flower's environment (FLOWER_BASIC_AUTH), not on its command line,
    # where `ps` would show it to every user of the machine.
    flower = stack.start(
        "flower",
        [*celery, "flower", f"--port={flower_port}", f"--address={HOST}"],
        {**env, "FLOWER_BASIC_AUTH": f"{user}:{password}"},
    )
    print(
        f"started {', '.join(c.name for c in stack.children if c.name != 'redis')} "
        f"(logs in {shown(stack.logs)})",
        flush=True,
    )
    stack.wait_ready(
        "a beat to lead", "no beat took the lease", leader_blame(url, prefix, beats), ready_timeout
    )
    stack.wait_ready(
        f"Flower to list the workers ({', '.join(workers)})",
        f"Flower did not list {' and '.join(workers)}",
        flower_blame(flower_port, f"{user}:{password}", workers, flower),
        ready_timeout,
    )

    hour = env["ERP_SYNC_SECONDS_PER_HOUR"]
    database = env["ERP_SYNC_DATABASE_URL"]
    exports = (
        f"ERP_SYNC_REDIS_URL={url} ERP_SYNC_SECONDS_PER_HOUR={hour} "
        f"ERP_SYNC_DATABASE_URL={database} ERP_SYNC_OUTBOUND_ALLOW={env['ERP_SYNC_OUTBOUND_ALLOW']}"
    )
    if "ERP_SYNC_KEY_PREFIX" in env:
        exports += f" ERP_SYNC_KEY_PREFIX={prefix}"
    if key_source != "ERP_SYNC_SECRET_KEY":  # the file's name, never the key itself
        exports += f" ERP_SYNC_SECRET_KEY=$(cat {key_source})"
    print(
        f"""
erp-sync is running (one schedule hour = {hour} s).
  Redis:   {redis_line}
  Database: {mask(database)}
  Flower:  http://{HOST}:{flower_port}   user {user}   password {password}
  demo-qbo: QuickBooks Online over HTTP at {qbo_url} (a fake server, realm {QBO_REALM};
           log {shown(qbo.log)}); credentials encrypted with the key in {key_source}
  Logs:    {shown(stack.logs)}/*.log
  Try:     export {exports}
           .venv/bin/erp-sync status
           .venv/bin/erp-sync schedule demo-01
           .venv/bin/erp-sync history demo-01
           .venv/bin/erp-sync history demo-qbo
           .venv/bin/erp-sync connection show demo-qbo
           .venv/bin/erp-sync settings set demo-01 --as demo-01-admin --payments-frequency daily
Ctrl-C stops everything (in the background: kill -INT {os.getpid()}).""",
        flush=True,
    )
    while True:
        stack.signals.check()
        stack.check_children()
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
