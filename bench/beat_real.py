"""Helpers for the benchmarks that time real ``celery -A worker beat`` processes (issue 11).

A private ``redis-server`` configured as the compose file runs it (AOF on, ``everysec``,
``noeviction``), beats started as the compose file starts them (``-l INFO``), and the probes the
benchmarks read: Redis time, the beat's counters, the age of the oldest overdue due entry (the
regular schedule's lateness), a process's CPU seconds, and settings changes written the way
``SettingsStore.update_settings`` writes them.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis

from config.keys import KeySpace
from config.models import AuditEntry, PaymentsFrequency, StoredSettings, SyncSettings
from tests.support.procs import Proc, beat, wait_until
from tests.support.redisproc import RedisServer

LEVEL = "INFO"  # docker-compose.yml: celery -A worker beat -l INFO
REBUILT = re.compile(r"rebuilt (\d+) companies' schedules in ([0-9.]+) s")


def server(workdir: Path) -> RedisServer:
    """redis-server as the compose file runs it: AOF on, fsync every second, noeviction."""
    return RedisServer(workdir / "redis", extra=["--appendfsync", "everysec"]).start()


def env_for(url: str, keys: KeySpace, **extra: str) -> dict[str, str]:
    return {"ERP_SYNC_REDIS_URL": url, "ERP_SYNC_KEY_PREFIX": keys.prefix, **extra}


def start_beat(name: str, env: dict[str, str], logs: Path) -> Proc:
    return beat(f"{name}-{time.monotonic_ns()}", env, logs, extra=["-l", LEVEL])


def stop(proc: Proc) -> None:
    proc.signal(signal.SIGTERM)
    proc.stop()


def now(client: redis.Redis) -> float:
    s, us = client.time()
    return float(s) + us / 1e6


def stat(client: redis.Redis, keys: KeySpace, name: str) -> int:
    return int(client.hget(keys.beat_stats, name) or 0)


def rebuilt_seconds(proc: Proc, after: int = 0) -> float:
    """Seconds of the ``after``-th (0: first) "rebuilt N companies' schedules" line of a beat."""
    found = REBUILT.findall(proc.output())
    return float(found[after][1])


def build(client: redis.Redis, keys: KeySpace, env: dict[str, str], logs: Path, n: int) -> float:
    """Let a real beat build every company's schedule (first start); its rebuild seconds."""
    proc = start_beat("build", env, logs)
    try:
        wait_until(
            lambda: REBUILT.search(proc.output()),
            900,
            f"the first beat never built the schedules:\n{proc.output()[-2000:]}",
            0.05,
        )
        assert int(client.hlen(keys.beat_applied)) >= n
        return rebuilt_seconds(proc)
    finally:
        stop(proc)


def restart_rebuilding(
    client: redis.Redis, keys: KeySpace, env: dict[str, str], logs: Path
) -> Proc:
    """Delete beat's change cursor and start a beat: it rebuilds every company's schedule (as
    after a trimmed change stream). Returns once it logged the start of the rebuild."""
    client.delete(keys.beat_cursor)
    proc = start_beat("rebuild", env, logs)
    wait_until(
        lambda: "rebuilding every company" in proc.output(),
        120,
        f"beat never started a rebuild:\n{proc.output()[-2000:]}",
        interval=0.005,
    )
    return proc


def rebuilt(proc: Proc) -> float:
    """Wait for a rebuild started by ``restart_rebuilding`` to end; its seconds (beat's log)."""
    wait_until(
        lambda: REBUILT.search(proc.output()),
        900,
        f"beat never rebuilt:\n{proc.output()[-2000:]}",
        interval=0.02,
    )
    return rebuilt_seconds(proc)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Lateness:
    """Samples, every ``interval`` seconds, how long the oldest overdue due entry has waited."""

    client: redis.Redis
    keys: KeySpace
    interval: float = 0.02
    samples: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Lateness:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            pipe = self.client.pipeline(transaction=False)
            pipe.time()
            pipe.zrange(self.keys.due, 0, 0, withscores=True)
            (s, us), first = pipe.execute()
            t = float(s) + us / 1e6
            self.samples.append(max(0.0, t - float(first[0][1])) if first else 0.0)
            self._stop.wait(self.interval)

    @property
    def max(self) -> float:
        return max(self.samples, default=0.0)


def settings_writes(
    client: redis.Redis,
    keys: KeySpace,
    companies: Iterable[str],
    frequency: PaymentsFrequency,
    version: int,
    maxlen: int,
    chunk: int = 200,
    pace: Callable[[int], None] | None = None,
) -> None:
    """Change each company's payments frequency as ``update_settings`` writes it: the new
    settings with the version bumped, one audit entry (list capped) and one change on the stream,
    ``chunk`` companies a round trip. ``pace(done)`` is called before each round trip."""
    at = datetime.now(UTC)
    settings = SyncSettings(payments_for_synced_invoices=frequency)
    batch: list[str] = []
    done = 0

    def flush() -> None:
        nonlocal done
        if pace is not None:
            pace(done)
        pipe = client.pipeline(transaction=False)
        for cid in batch:
            stored = StoredSettings(
                company=cid, version=version, settings=settings, updated_at=at, updated_by="bench"
            )
            pipe.set(keys.settings(cid), stored.model_dump_json())
            pipe.lpush(
                keys.audit(cid),
                AuditEntry(
                    at=at,
                    actor="bench",
                    action="settings.update",
                    company=cid,
                    version=version,
                    old={"payments_for_synced_invoices": "?"},
                    new={"payments_for_synced_invoices": frequency.value},
                ).model_dump_json(),
            )
            pipe.ltrim(keys.audit(cid), 0, 1999)
            pipe.xadd(
                keys.changes,
                {"company": cid, "version": str(version)},
                maxlen=maxlen,
                approximate=True,
            )
        pipe.execute()
        done += len(batch)
        batch.clear()

    for cid in companies:
        batch.append(cid)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()


def med(values: list[float]) -> str:
    """``median (min-max)`` with magnitudes suited to the figure."""
    if not values:
        return "-"
    spec = ",.0f" if max(values) >= 100 else ".2f"
    mid, low, high = statistics.median(values), min(values), max(values)
    return f"{mid:{spec}} ({low:{spec}}-{high:{spec}})"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())
