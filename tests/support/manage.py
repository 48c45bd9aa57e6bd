"""``python manage.py ...`` as an admin or operator types it: a real subprocess of the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

from tests.support import procs


def manage(
    env: Mapping[str, str], *args: str, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the management command with the test's ERP_SYNC_* settings; never raises on exit."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=procs.ROOT,
        env=procs.process_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
