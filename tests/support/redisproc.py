"""A private ``redis-server`` on a free port, which a test may stop, kill or restart at will."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis


def skip_unless_ci(reason: str) -> None:
    """Skip a test whose real part is missing here; in CI (``CI`` set, as ``.ci/run`` sets it)
    fail instead, so a missing server never passes as a green run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: required in CI (.ci/run installs it)")
    pytest.skip(reason)


def require_redis_server() -> None:
    """Skip a test that needs redis-server where it is missing; in CI fail instead."""
    if shutil.which("redis-server") is None:
        skip_unless_ci("redis-server not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process with its own directory (AOF on, so a restart keeps data)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        password: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        # Clients handed out are kept and closed with the server, so none is garbage-collected
        # with an open socket mid-test (an unraisable ResourceWarning, an error under pytest).
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A decoding client on this server (``kwargs``: ``redis.Redis`` options)."""
        client = redis.Redis.from_url(self.url, decode_responses=True, **kwargs)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.dir / "redis.log"),
            *self.extra,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client(socket_connect_timeout=0.2).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.dir}")

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: the AOF is flushed)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt death (SIGKILL); with appendfsync always nothing acknowledged is lost."""
        self._signal(signal.SIGKILL)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def _signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=10)
        self.proc = None
