"""A test's processes on the session's redis-server, under its own key prefix, and the
management command run as a real subprocess with the same environment."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import redis

from config.keys import KeySpace
from tests.support.procs import ROOT, Proc, process_env


@dataclass
class ProcStack:
    env: dict[str, str]
    client: redis.Redis
    keys: KeySpace
    logs: Path
    procs: list[Proc] = field(default_factory=list)

    def manage(self, *args: str) -> str:
        """``python manage.py ARGS`` in a subprocess; fails the test unless it exits 0."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=process_env(self.env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def now(self) -> float:
        """Redis server time, the fleet's one clock."""
        seconds, micros = self.client.time()
        return float(seconds) + micros / 1e6
