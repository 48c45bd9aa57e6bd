"""One database per process: the engine, SQLite made safe for many workers, the schema check.

SQLite (the embedded default) is opened in WAL mode with a busy timeout: readers never block the
one writer, and a writer waits for another's short transaction instead of failing at once. Every
write is one short transaction (one page of records, one run record). PostgreSQL connections are
pinged before use, so a restarted server costs a reconnect, not a failed sync.

``Database.engine`` checks the schema once per process: a worker or command that finds it behind
fails with one line naming the URL (every secret masked, ``config.urls``) and the command to run,
instead of failing deep inside a sync with "no such table". A URL that cannot be used at all (a
port that is not a number or out of range, a dialect or driver that is not installed, a SQLite
folder that cannot be made) is a ``ConfigError`` naming ``ERP_SYNC_DATABASE_URL``: one line from
``db upgrade``, ``history`` or a worker's start, never a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from config.env import get_settings
from config.urls import mask_url, mask_urls
from erp_sync.errors import ConfigError, DatabaseUnavailable, SchemaBehind

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_SECONDS = 30.0
T = TypeVar("T")


def mask(url: str) -> str:
    """The URL with every secret hidden (for messages and logs); never raises."""
    return mask_url(url)


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def known_revisions() -> set[str]:
    """Every revision this code's migrations know (an unknown one is from newer code)."""
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
    cursor.close()


def _unusable(url: str, reason: str) -> ConfigError:
    return ConfigError(
        mask_urls(f"ERP_SYNC_DATABASE_URL {url} cannot be used: {reason}").splitlines()[0]
    )


def parse(url: str) -> URL:
    """``url`` parsed, its port checked (SQLAlchemy takes ``:99999`` and leaves it to the
    driver); ``ConfigError`` for one that cannot be used."""
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError) as error:
        raise _unusable(url, f"not a database URL ({error})") from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise _unusable(url, f"port {parsed.port} is out of range (1-65535)")
    return parsed


def make_engine(url: str) -> Engine:
    """An engine for ``url``, configured for many worker processes and threads."""
    parsed = parse(url)
    try:
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            return _sqlite_engine(url, parsed.database or "")
        connect_args = {"connect_timeout": 5} if backend == "postgresql" else {}
        return create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=20, connect_args=connect_args
        )
    except exc.NoSuchModuleError:
        raise _unusable(
            url, f"SQLAlchemy has no dialect {parsed.drivername!r} (sqlite, postgresql+psycopg)"
        ) from None
    except ImportError as error:  # the dialect is known, its driver is not installed
        raise _unusable(url, f"its driver is not installed ({error.name or error})") from None
    except (exc.ArgumentError, TypeError, ValueError) as error:
        raise _unusable(url, str(error)) from None


def _sqlite_engine(url: str, database: str) -> Engine:
    if database and database != ":memory:":
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _unusable(
                url, f"cannot make the folder of the SQLite file ({type(error).__name__})"
            ) from None
    # As many pooled connections as a thread-pool worker has threads (16 in compose).
    engine = create_engine(
        url,
        pool_size=5,
        max_overflow=20,
        connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False},
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """A database URL and its engine, created on first use (after a prefork child forks)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._checked = False
        self._lock = threading.Lock()

    @property
    def masked_url(self) -> str:
        return mask(self.url)

    @property
    def raw_engine(self) -> Engine:
        """The engine without the schema check (for ``db upgrade`` and ``db current``)."""
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.url)
            return self._engine

    @property
    def engine(self) -> Engine:
        """The engine, once the schema was found current (checked once per process)."""
        engine = self.raw_engine
        if not self._checked:
            self.check()
            self._checked = True
        return engine

    def current_revision(self) -> str | None:
        def read(engine: Engine) -> str | None:
            with engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()

        return self.guard(lambda: read(self.raw_engine))

    def check(self) -> None:
        """Raise ``SchemaBehind`` unless the schema is at this code's head revision."""
        current, head = self.current_revision(), head_revision()
        if current == head:
            return
        if current is not None and current not in known_revisions():
            raise SchemaBehind(
                f"the database {self.masked_url} is at revision {current}, newer than this "
                f"code knows (it needs {head}): upgrade this code, not the database"
            )
        state = f"at revision {current}" if current else "empty (no schema)"
        raise SchemaBehind(
            f"the database {self.masked_url} is {state}, this code needs {head}: "
            "run `erp-sync db upgrade`"
        )

    def upgrade(self) -> tuple[str | None, str]:
        """Migrate to the head revision; returns (before, after)."""
        from alembic import command

        before = self.current_revision()
        cfg = alembic_config()

        def run() -> None:
            with self.raw_engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")

        self.guard(run)
        self._checked = False
        return before, head_revision()

    def guard(self, work: Callable[[], T]) -> T:
        """Run ``work``; a database that is down, unreachable or locked is one clear error."""
        try:
            return work()
        except (exc.OperationalError, exc.InterfaceError) as error:
            text = str(error.orig).strip() if error.orig else str(error)
            reason = text.splitlines()[0] if text else type(error).__name__
            raise DatabaseUnavailable(
                mask_urls(f"the database {self.masked_url} is unavailable: {reason}")
            ) from None

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
            self._engine, self._checked = None, False


def database(url: str | None = None) -> Database:
    """The process's ``Database`` for ``url`` (default: the configured one), one per URL."""
    return _database(url or get_settings().effective_database_url)


@lru_cache(maxsize=16)
def _database(url: str) -> Database:
    return Database(url)
