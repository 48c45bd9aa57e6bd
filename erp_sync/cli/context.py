"""The one context object every subcommand shares; it opens Redis only when asked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import click
import redis

from config.env import Settings, get_settings
from config.keys import KeySpace
from erp_sync.control.inputs import os_user
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database, database
from erp_sync.infra.clock import RedisClock
from erp_sync.infra.publish import CeleryPublisher, Publisher
from erp_sync.infra.redis_client import connect


@dataclass
class Ctx:
    _client: redis.Redis | None = field(default=None, repr=False)
    _opened: bool = field(default=False, repr=False)
    # How sync-now enqueues; tests pass their own. Built on first use, closed with the context.
    _publisher: Publisher | None = field(default=None, repr=False)
    # The database (default: ERP_SYNC_DATABASE_URL's); tests may pass their own.
    _db: Database | None = field(default=None, repr=False)

    @property
    def env(self) -> Settings:
        return get_settings()

    @property
    def keys(self) -> KeySpace:
        return KeySpace(self.env.key_prefix)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.env.redis_url)
            self._opened = True
        return self._client

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = database()
        return self._db

    def now(self) -> float:
        """Redis server time (the fleet's one clock), in epoch seconds."""
        return RedisClock(self.client).refresh()

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = CeleryPublisher(self.env)
        return self._publisher

    def close(self) -> None:
        """Close the connection this context opened (a client passed in belongs to the caller)."""
        if self._opened and self._client is not None:
            self._client.close()
            self._client, self._opened = None, False
        if isinstance(self._publisher, CeleryPublisher):
            self._publisher.close()
            self._publisher = None

    @property
    def store(self) -> SettingsStore:
        return SettingsStore(
            self.client,
            self.keys,
            change_stream_maxlen=self.env.change_stream_maxlen,
            os_user=os_user(),
        )


pass_ctx = click.make_pass_decorator(Ctx)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def table(rows: list[list[str]], header: list[str]) -> None:
    """Print aligned columns; plain text that greps and reads well in a terminal."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def note_if_removed(ctx: Ctx, company_id: str) -> None:
    """Before showing what outlives a company: say on stderr that it was removed, when and by
    whom (``NotFound`` for an id that never existed)."""
    gone = ctx.store.outlived(company_id)
    if gone is None:
        return
    when = (
        f" at {gone.at:%Y-%m-%d %H:%M:%S} UTC by {gone.by}"
        if gone.at is not None
        else " (before removals were recorded)"
    )
    click.echo(f"note: company {company_id!r} was removed{when}; showing what was kept", err=True)
