"""A private PostgreSQL server for tests, so no test depends on a server the machine happens to run.

``start_postgres`` uses the server named by ``ERP_SYNC_TEST_POSTGRES_URL`` when it answers (a
CI service container, say), and otherwise ``initdb``s a throwaway cluster on a free port with
durability off and, where there is one, on tmpfs (tests never need a crash-safe disk).
PostgreSQL refuses to run as root, and CI runs as root: there the cluster belongs to the
``postgres`` system user and never lives under pytest's root-owned basetemp, which is mode 0700
and not traversable by that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from tests.support.redisproc import free_port

ENV_URL = "ERP_SYNC_TEST_POSTGRES_URL"
PG_USER = "postgres"  # the cluster's superuser, and the system user that runs it as root


def _libpq(url: str) -> str:
    """A libpq conninfo for a SQLAlchemy URL (psycopg knows no ``+psycopg`` driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def find_pg_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then the newest Debian one
    (Debian keeps them out of PATH, under ``/usr/lib/postgresql/<version>/bin``)."""
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).parent / "pg_ctl").exists():
        return Path(on_path).parent
    dirs = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if Path(d, "initdb").exists()]
    dirs.sort(key=lambda d: tuple(int(p) for p in d.parent.name.split(".") if p.isdigit()))
    return dirs[-1] if dirs else None


def require_postgres() -> Path:
    """The server binaries' directory, installing Debian's ``postgresql`` first as root.

    Never a skip: a test run that cannot start PostgreSQL must say so, not pass by omission."""
    bindir = find_pg_bindir()
    if bindir is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["update", "-qq"], ["install", "-y", "-qq", "postgresql"]):
            subprocess.run(["apt-get", *cmd], env=env, check=True, stdout=subprocess.DEVNULL)
        bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL's initdb/pg_ctl not found: install the server "
            "(sudo apt-get install postgresql, or run scripts/setup.sh)"
        )
    return bindir


def _ensure_pg_user() -> None:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)


@dataclass
class PostgresServer:
    """A server the tests may create databases on; ``private`` when this process owns it.

    On a shared (``ERP_SYNC_TEST_POSTGRES_URL``) server each database name gets this run's
    random suffix, and ``stop`` drops the ones left, so concurrent runs never meet."""

    admin_url: str
    private: bool
    port: int
    dir: Path | None = None
    bindir: Path | None = None
    suffix: str = ""
    running: bool = True
    databases: set[str] = field(default_factory=set)

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(_libpq(self.admin_url), autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if it exists); returns its SQLAlchemy URL."""
        real = self._real(name)
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(real))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(real)))
        self.databases.add(real)
        return _with_database(self.admin_url, real)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` (as passed to ``create_database``); ``FORCE`` cuts off connections a
        test left open (a pooled engine not disposed), which would otherwise block the drop."""
        self._drop(self._real(name))

    def _real(self, name: str) -> str:
        return f"{name}_{self.suffix}" if self.suffix else name

    def _drop(self, real: str) -> None:
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(real))
            )
        self.databases.discard(real)

    def stop_server(self) -> None:
        """Take the server down, keeping its data (a "database down" test); ``start_server``
        brings it back on the same port."""
        self._pg_ctl("stop", "-m", "fast")
        self.running = False

    def start_server(self) -> None:
        self._pg_ctl(
            "start",
            "-l",
            str(self._dir / "postgres.log"),
            "-o",
            " ".join(
                [
                    f"-p {self.port}",
                    f"-k {self._dir / 'sock'}",
                    "-c listen_addresses=127.0.0.1",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                ]
            ),
        )
        self.running = True

    def stop(self) -> None:
        """The end of the session: a private cluster dies and its directory goes; on a shared
        server only the databases this run made are dropped."""
        if not self.private:
            for real in sorted(self.databases):
                self._drop(real)
            return
        if self.running:
            self._pg_ctl("stop", "-m", "immediate")
            self.running = False
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def _dir(self) -> Path:
        if not self.private or self.dir is None:
            raise RuntimeError(
                f"the server at {self.admin_url} is shared ({ENV_URL}); "
                "only a private cluster can be stopped and started"
            )
        return self.dir

    def _pg_ctl(self, *args: str) -> None:
        where = self._dir
        assert self.bindir is not None
        _run(
            [str(self.bindir / "pg_ctl"), "-D", str(where / "data"), "-w", "-t", "30", *args], where
        )


def _run(cmd: list[str], cwd: Path) -> None:
    """Run a server command, as ``postgres`` when we are root; its output goes into the error.

    ``cwd`` is the cluster dir, as the binaries need a current directory they can read."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", PG_USER, "--", *cmd]
    done = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        log = cwd / "postgres.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}"
        )


def _cluster_parent(tmp: Path, root: bool) -> Path | None:
    """Where the cluster goes: tmpfs (``/dev/shm``) when there is one, as on disk (ext4, even
    with fsync off) ``initdb`` takes twice as long and CREATE DATABASE 260 ms instead of 25;
    else ``tmp``, or the system temp dir as root (``None``). All keep the socket path short."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None if root else tmp


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(_libpq(url), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def start_postgres(tmp: Path) -> PostgresServer:
    """The session's server: ``ERP_SYNC_TEST_POSTGRES_URL`` if it answers, else a private cluster
    in a directory of its own (so concurrent xdist workers never share one) on a free port."""
    shared = os.environ.get(ENV_URL)
    if shared and _reachable(shared):
        url = make_url(shared).set(drivername="postgresql+psycopg")
        return PostgresServer(
            admin_url=url.render_as_string(hide_password=False),
            private=False,
            port=url.port or 5432,
            suffix=uuid.uuid4().hex[:8],
        )
    bindir = require_postgres()
    root = os.geteuid() == 0
    if root:
        _ensure_pg_user()
    base = Path(tempfile.mkdtemp(prefix="erp-sync-pg-", dir=_cluster_parent(tmp, root)))
    if root:
        shutil.chown(base, PG_USER, PG_USER)
    (base / "sock").mkdir()
    if root:
        shutil.chown(base / "sock", PG_USER, PG_USER)
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(base / "data"),
                "-U",
                PG_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            base,
        )
        # Two xdist workers may pick the same free port between its probe and the bind: retry.
        for attempt in range(5):
            port = free_port()
            server = PostgresServer(
                admin_url=f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/postgres",
                private=True,
                port=port,
                dir=base,
                bindir=bindir,
                running=False,
            )
            try:
                server.start_server()
                return server
            except RuntimeError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
