"""A company's connection to a real ERP: where it is, who connected it, its encrypted secrets.

One HASH per company (``<prefix>:connection:<company>``): ``meta`` (public JSON: ERP, realm,
client id, URLs, who connected it and when, status), ``secret`` (the client secret and the
refresh token, sealed by ``erp_sync.control.vault``) and ``generation`` (bumped on every
refresh-token rotation). Rotation is a compare-and-set on ``generation``: a worker stores a new
refresh token only if it refreshed from the newest one, so a slow worker can never put back an
older token.

A company with no connection is served by the sandbox ERP; a connected one by its ERP's real
connector. A connection whose refresh token was refused (``invalid_grant``) is kept, marked
``reconnect_required``: every sync of the company then fails at once with one clear error
instead of asking the token endpoint again (no retry storm), until an admin reconnects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from config.keys import KeySpace
from config.models import AuditEntry, Erp, parse
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import Denied, UnitOfWork
from erp_sync.control.vault import Vault
from erp_sync.errors import ConcurrentUpdate, CorruptRecord, NotFound

Status = Literal["connected", "reconnect_required"]


class Connection(BaseModel):
    """The public part of a connection (what ``connection show`` prints)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    company: str
    erp: Erp
    realm_id: str
    client_id: str
    base_url: str
    token_url: str
    connected_by: str
    connected_at: datetime
    status: Status = "connected"
    error: str | None = None
    refreshed_at: datetime | None = None


class Secrets(BaseModel):
    """The sealed part: never printed, logged or passed in a task's arguments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_secret: str
    refresh_token: str

    def __repr__(self) -> str:  # a stray log line or traceback shows no secret
        return "Secrets(***)"

    __str__ = __repr__


class ConnectionStore:
    """Reads and writes connections (client passed in; the vault only where secrets are)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        vault: Vault | None = None,
        store: SettingsStore | None = None,
    ) -> None:
        self.client, self.keys, self._vault = client, keys, vault
        # Audit entries go the settings store's way (its cap, its OS user), in our transaction.
        self._store = store or SettingsStore(client, keys)

    @property
    def vault(self) -> Vault:
        if self._vault is None:
            self._vault = Vault.from_settings()
        return self._vault

    def _watched(self, company: str) -> list[str]:
        return [self.keys.users(company), self.keys.connection(company)]

    def save(self, connection: Connection, secrets: Secrets, audit: AuditEntry) -> None:
        """Store a new connection (replacing any earlier one, with a fresh generation) and its
        audit entry, together, as ``audit.actor`` (an admin of the company)."""
        sealed = self.vault.seal(secrets.model_dump())
        key = self.keys.connection(connection.company)

        def write(work: UnitOfWork) -> None:
            work.require_admin(connection.company, audit.actor)
            work.begin()
            work.pipe.delete(key, self.keys.access_token(connection.company))
            work.pipe.hset(
                key,
                mapping={"meta": connection.model_dump_json(), "secret": sealed, "generation": 1},
            )
            work.audit(audit)

        self._store.transact(
            self._watched(connection.company),
            write,
            Denied(connection.company, audit.actor, "connection.connect"),
        )

    def get(self, company: str) -> Connection | None:
        raw = self.client.hget(self.keys.connection(company), "meta")
        return parse(Connection, raw, f"connection of {company!r}") if raw else None

    def require(self, company: str) -> Connection:
        found = self.get(company)
        if found is None:
            raise NotFound(f"{company!r} is not connected to an ERP")
        return found

    def secrets(self, company: str) -> tuple[Secrets, int]:
        """The decrypted secrets and the generation they belong to."""
        sealed, generation = self.client.hmget(
            self.keys.connection(company), ["secret", "generation"]
        )
        if not sealed:
            raise NotFound(f"{company!r} is not connected to an ERP")
        data = self.vault.open(str(sealed), f"the credentials of {company!r}")
        try:
            return Secrets.model_validate(data), int(generation or 0)
        except ValidationError:
            raise CorruptRecord(f"the credentials of {company!r} are incomplete") from None

    def rotate_refresh_token(
        self, company: str, generation: int, refresh_token: str, refreshed_at: datetime
    ) -> None:
        """Store the newest refresh token, if ``generation`` is still the stored one."""
        key = self.keys.connection(company)
        with self.client.pipeline() as pipe:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            current = pipe.hget(key, "generation")
            meta = pipe.hget(key, "meta")
            if current is None or int(current) != generation or meta is None:
                pipe.reset()
                raise ConcurrentUpdate(f"the connection of {company!r} changed meanwhile")
            old, _ = self.secrets(company)
            sealed = self.vault.seal({**old.model_dump(), "refresh_token": refresh_token})
            updated = parse(Connection, meta, "connection").model_copy(
                update={"refreshed_at": refreshed_at}
            )
            pipe.multi()
            pipe.hset(
                key,
                mapping={
                    "secret": sealed,
                    "generation": generation + 1,
                    "meta": updated.model_dump_json(),
                },
            )
            try:
                pipe.execute()
            except redis.WatchError:
                raise ConcurrentUpdate(f"the connection of {company!r} changed meanwhile") from None

    def mark(self, company: str, status: Status, error: str | None) -> None:
        key = self.keys.connection(company)
        raw = self.client.hget(key, "meta")
        if raw:
            meta = parse(Connection, raw, "connection").model_copy(
                update={"status": status, "error": error}
            )
            self.client.hset(key, "meta", meta.model_dump_json())

    def delete(self, company: str, audit: AuditEntry) -> bool:
        """Forget the connection (the company goes back to the sandbox ERP), audited."""
        key = self.keys.connection(company)

        def write(work: UnitOfWork) -> bool:
            work.require_admin(company, audit.actor)
            existed = bool(work.pipe.exists(key))
            work.begin()
            work.pipe.delete(key, self.keys.access_token(company))
            work.audit(audit)
            return existed

        return self._store.transact(
            self._watched(company), write, Denied(company, audit.actor, "connection.disconnect")
        )

    def rotate_keys(self) -> int:
        """Re-encrypt every stored secret with the newest key; returns how many."""
        done = 0
        for key in self.client.scan_iter(self.keys.pattern("connection"), count=500):
            if self.keys.company_of("connection", str(key)) is None:
                continue  # an access token or a lock, not a connection
            sealed = self.client.hget(key, "secret")
            if sealed:
                self.client.hset(key, "secret", self.vault.rotate(str(sealed)))
                done += 1
        return done
