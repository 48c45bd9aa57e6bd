"""Helpers for the QuickBooks Online connector's tests: a realm on the fake server, a company on
``quickbooks_online`` connected to it, and syncs run the way a worker runs them.

Every secret made here is unique to its test and spelt distinctively (``cs-...``, ``rt-...``), so
a test can grep any output for the literal values: a leak cannot hide behind a common string.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from config.keys import KeySpace
from config.models import AuditEntry, Erp, SyncKind
from erp_sync.connectors import connector_for
from erp_sync.connectors.qbo.oauth import TokenManager
from erp_sync.connectors.throttled import throttled
from erp_sync.control.connections import Connection, ConnectionStore, Secrets
from erp_sync.control.store import SettingsStore
from erp_sync.db import Counts, Database
from erp_sync.runs.syncs import run_sync
from erp_sync.throttle.ratelimit import TokenBucket, limit_for
from tests.support.fake_qbo.client import FakeQbo, Seed

ADMIN = "alice"


@dataclass(frozen=True)
class QboRealm:
    """A company (realm) on the fake server and the credentials an admin would connect with."""

    qbo: FakeQbo
    realm_id: str
    client_id: str
    client_secret: str
    refresh_token: str  # the first one: the fake rotates it on every refresh

    def stats(self) -> dict[str, int]:
        """The fake's counters (only the integer ones)."""
        return {k: v for k, v in self.qbo.stats(self.realm_id).items() if isinstance(v, int)}

    def live_refresh_token(self) -> str | None:
        token = self.qbo.realm_info(self.realm_id)["refresh_token"]
        return str(token) if token is not None else None


def new_realm(
    qbo: FakeQbo, seed: Seed | None = None, access_token_ttl: float | None = None
) -> QboRealm:
    tag = uuid.uuid4().hex
    realm = QboRealm(
        qbo, str(uuid.uuid4().int % 10**15), f"app-{tag[:8]}", f"cs-{tag}", f"rt-{tag}"
    )
    qbo.create_realm(
        realm.realm_id,
        realm.client_id,
        realm.client_secret,
        realm.refresh_token,
        seed=seed,
        access_token_ttl=access_token_ttl,
    )
    return realm


def qbo_company(
    client: redis.Redis, keys: KeySpace, company: str = "acme", projects: tuple[str, ...] = ()
) -> None:
    """A company on quickbooks_online with an admin ``alice``; ``projects`` are ERP job ids
    (a Procore project's id is the job it is linked to)."""
    store = SettingsStore(client, keys)
    store.add_company(company, Erp.QUICKBOOKS_ONLINE.value)
    for project in projects:
        store.add_project(company, project)
    store.grant(company, ADMIN, "admin")


def connect(client: redis.Redis, keys: KeySpace, realm: QboRealm, company: str = "acme") -> None:
    """What ``erp-sync connect`` stores, without the CLI (its own tests drive the CLI)."""
    now = datetime.now(UTC)
    ConnectionStore(client, keys).save(
        Connection(
            company=company,
            erp=Erp.QUICKBOOKS_ONLINE,
            realm_id=realm.realm_id,
            client_id=realm.client_id,
            base_url=realm.qbo.url,
            token_url=realm.qbo.token_url,
            connected_by=ADMIN,
            connected_at=now,
        ),
        Secrets(client_secret=realm.client_secret, refresh_token=realm.refresh_token),
        AuditEntry(at=now, actor=ADMIN, action="connection.connect", company=company),
    )


def sync(
    client: redis.Redis,
    keys: KeySpace,
    db: Database,
    kind: SyncKind,
    project: str | None = None,
    company: str = "acme",
) -> Counts:
    """One sync as a worker runs it (the company's connector under its shared rate limit),
    without the runner's bookkeeping; waits are slept rather than deferred."""
    found = SettingsStore(client, keys).get_company(company)
    bucket = TokenBucket(client, keys, company, limit_for(client, keys, found.erp, company))
    connector = throttled(connector_for(client, keys, found), bucket)
    return run_sync(client, keys, db, company, kind, project, connector)


def tokens(client: redis.Redis, keys: KeySpace, company: str = "acme") -> set[str]:
    """Every secret value the company's connection holds right now: the client secret, the
    stored refresh token and the cached access token (decrypted here, never printed)."""
    store = ConnectionStore(client, keys)
    found: set[str] = set()
    if store.get(company) is not None:
        secrets, _ = store.secrets(company)
        found |= {secrets.client_secret, secrets.refresh_token}
    cached = TokenManager(client, keys, store, company)._cached()
    if cached is not None:
        found.add(cached)
    return found


def redis_dump(client: redis.Redis, keys: KeySpace) -> str:
    """Every string, list, hash and zset value under the prefix, Celery's message bodies
    decoded (they are base64 JSON), as one text to grep for secrets."""
    out: list[str] = []
    for key in client.scan_iter(f"{keys.prefix}*", count=500):
        kind = client.type(key)
        values: list[str] = []
        if kind == "string":
            values = [str(client.get(key))]
        elif kind == "list":
            values = [str(v) for v in client.lrange(key, 0, -1)]
        elif kind == "hash":
            values = [str(v) for v in client.hgetall(key).values()]
        elif kind == "zset":
            values = [str(v) for v in client.zrange(key, 0, -1)]
        elif kind == "set":
            values = [str(v) for v in client.smembers(key)]
        elif kind == "stream":
            values = [json.dumps(fields) for _, fields in client.xrange(key) or []]
        for value in values:
            out.append(f"{key} {value}")
            out.extend(_decoded_bodies(value))
    return "\n".join(out)


def _decoded_bodies(value: str) -> list[str]:
    """A kombu message's base64 body, decoded (a secret in a task's arguments shows here)."""
    try:
        message = json.loads(value)
    except ValueError:
        return []
    if not isinstance(message, dict) or not isinstance(message.get("body"), str):
        return []
    try:
        return [base64.b64decode(message["body"]).decode(errors="replace")]
    except ValueError:
        return []


def leaked(text: str, secrets: set[str]) -> list[str]:
    """The secrets that ``text`` contains (shown shortened, so a failure leaks nothing more)."""
    return [f"{s[:6]}..." for s in secrets if s and s in text]
