"""Real Celery processes (worker, beat, flower) as subprocesses of a test, with their logs.

Each process runs from the repo root with a clean ERP_SYNC_* environment that the test gives, so
it talks to the test's own redis-server under the test's own key prefix.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery", "-A", "worker"]
# The internal targets the tests allow (ERP_SYNC_OUTBOUND_ALLOW): their receivers and fake ERPs
# listen on loopback, which the default policy refuses.
TEST_OUTBOUND_ALLOW = "127.0.0.1,::1"
INHERITED = ("ERP_SYNC_DATABASE_URL", "ERP_SYNC_OUTBOUND_ALLOW")


def process_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The test's settings; the test's own database and loopback opt-in (tests/conftest.py)
    unless they name their own (``ERP_SYNC_OUTBOUND_ALLOW=""``: the default policy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_SYNC_")}
    for name in INHERITED:
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """One subprocess with its combined output in a log file the test can read and print."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self._fh = self.log.open("ab")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=process_env(env),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):  # it died since we looked
                os.kill(self.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL the process and its children (a prefork worker's pool too)."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """Graceful stop (SIGTERM), then SIGKILL of the whole group if it lingers."""
        self.signal(signal.SIGTERM)
        self._finish(timeout)

    def _finish(self, timeout: float) -> None:
        if self.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        if self.alive():
            self.kill_group()
        self._fh.close()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        wait_until(
            lambda: text in self.output(),
            timeout,
            f"{self.name} never printed {text!r}:\n{self.output()[-3000:]}",
        )


def stop_all(procs: Iterable[Proc], timeout: float = 15) -> None:
    """``stop`` several processes at once: all get SIGTERM first, so their shutdowns overlap."""
    procs = list(procs)
    for proc in procs:
        proc.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        proc.signal(signal.SIGTERM)
    for proc in procs:
        proc._finish(timeout)


def wait_until(
    check: Callable[[], object], timeout: float, message: str = "", interval: float = 0.05
) -> None:
    """Poll ``check`` until truthy; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout}s")


def worker(
    name: str,
    env: Mapping[str, str],
    logdir: Path,
    queues: str = "company,project",
    pool: str = "threads",
    concurrency: int = 4,
    extra: list[str] | None = None,
) -> Proc:
    return Proc(
        name,
        [
            *CELERY,
            "worker",
            "-Q",
            queues,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            *(extra or []),
        ],
        env,
        logdir,
    )


def beat(name: str, env: Mapping[str, str], logdir: Path, extra: list[str] | None = None) -> Proc:
    return Proc(name, [*CELERY, "beat", "-l", "INFO", *(extra or [])], env, logdir)
