"""A process whose wall clock is wrong: ``time.time()`` shifted by a fixed number of seconds.

``skewed(env, seconds, workdir)`` returns the environment for a subprocess whose ``time.time``
is off by ``seconds`` (behind when negative). It works through a ``sitecustomize`` module on
``PYTHONPATH``, which Python imports at start-up before any of our code, so every library in
that process sees the same wrong clock, as on a host whose NTP failed. The monotonic clock is
left alone (no wall-clock adjustment moves it on a real host either).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SITECUSTOMIZE = '''\
"""Shift time.time() by TEST_CLOCK_SKEW seconds (tests/support/skew.py)."""
import os
import time

_skew = float(os.environ.get("TEST_CLOCK_SKEW", "0"))
if _skew:
    _real_time = time.time
    _real_time_ns = time.time_ns
    time.time = lambda: _real_time() + _skew
    time.time_ns = lambda: _real_time_ns() + int(_skew * 1e9)
'''


def skewed(env: Mapping[str, str], seconds: float, workdir: Path) -> dict[str, str]:
    """``env`` for a process whose clock is ``seconds`` off (the module is written once)."""
    folder = workdir / "skew"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "TEST_CLOCK_SKEW": str(seconds)}
