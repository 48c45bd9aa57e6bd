"""A Redis primary with one replica, and Sentinels watching them, all on loopback ports."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import redis

from tests.support.procs import wait_until
from tests.support.redisproc import RedisServer, free_port

MASTER = "erpmaster"


@dataclass
class ReplicaSet:
    """A primary and a replica of it (its full sync starts at once: no diskless delay)."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[int] = field(default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path, extra: list[str] | None = None) -> ReplicaSet:
        """``extra``: more ``redis-server`` options for both."""
        both = ["--repl-diskless-sync-delay", "0", *(extra or [])]
        primary = RedisServer(workdir / "primary", extra=both).start()
        replica = RedisServer(
            workdir / "replica", extra=["--replicaof", "127.0.0.1", str(primary.port), *both]
        ).start()
        found = cls(primary, replica)
        wait_until(found.replica_online, 20, "the replica never synced")
        return found

    def replica_online(self) -> bool:
        """Synced on both sides: the replica's link is up and the primary counts it ``online``
        (what the store's replica count reads: the primary's view lags the replica's by up to
        a replication ping, and a count of 0 read meanwhile is cached for 2 s)."""
        try:
            mine = self.replica.client().info("replication")
            theirs = self.primary.client().info("replication")
        except redis.RedisError:
            return False
        online = [v for k, v in theirs.items() if k.startswith("slave") and isinstance(v, dict)]
        return mine.get("master_link_status") == "up" and any(
            r.get("state") == "online" for r in online
        )

    def add_sentinels(self, workdir: Path, count: int = 3, quorum: int = 2) -> str:
        """``count`` Sentinels monitoring the primary; returns the ``sentinel://`` URL."""
        for n in range(count):
            port = free_port()
            conf = workdir / f"sentinel{n}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            self._procs.append(
                subprocess.Popen(
                    [self.primary.binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.sentinels.append(port)
        for port in self.sentinels:
            wait_until(partial(master_port, port), 20, "a sentinel does not answer")
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"sentinel://{hosts}/0?master={MASTER}"

    def master_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers names it."""
        for port in self.sentinels:
            found = master_port(port)
            if found is not None:
                return found
        return None

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait(10)
        for server in (self.replica, self.primary):
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)  # a stopped one would not shut down
            server.close_clients()
            server.kill()


def master_port(sentinel_port: int) -> int | None:
    probe = redis.Redis(port=sentinel_port, decode_responses=True, socket_timeout=2)
    try:
        answer = probe.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "get-master-addr-by-name", MASTER
        )
        return int(answer[1]) if answer else None
    except redis.RedisError:
        return None
    finally:
        probe.close()
