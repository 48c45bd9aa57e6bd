"""A company's connection to a real ERP: where it is, who connected it, its encrypted secrets.

One HASH per company (``<prefix>:connection:<company>``): ``meta`` (public JSON: ERP, realm,
client id, URLs, who connected it and when, status), ``secret`` (the client secret and the
refresh token, sealed by ``erp_sync.control.vault``) and ``generation``.

Generations only ever increase: every write of a connection's secrets (``connect``, a token
rotation) takes the next number of one fleet-wide counter (``KeySpace.connection_generations``),
so no generation is given twice, not even across a disconnect or a company removed and added
again. Every write is a compare-and-set, one unit of work of the settings store (WATCH of the
connection, the write in MULTI; ``SettingsStore.transact``): a worker stores a rotated refresh
token only if it refreshed from the generation still stored, so a refresh that was in flight
while an admin reconnected fails instead of putting the old realm's token beside the new client
secret; ``mark`` given the generation it refreshed from does not mark a newer connection; and
re-encrypting (``reseal``) retries when a rotation lands between its read and its write, instead
of putting the spent token back. Re-encrypting keeps the generation: the content is unchanged,
so a refresh in flight meanwhile still stores its (valid, rotated) token.

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

    def _next_generation(self, pipe: redis.client.Pipeline, current: object) -> int:
        """In the read phase: the counter's next number, and above the stored one (a counter
        lost with a Redis rebuilt from the database starts again low)."""
        taken = int(pipe.incr(self.keys.connection_generations))
        return max(taken, int(str(current or 0)) + 1)

    def save(
        self,
        connection: Connection,
        secrets: Secrets,
        audit: AuditEntry,
        requested: dict[str, object] | None = None,
    ) -> int:
        """Store a new connection (replacing any earlier one, under a newer generation) and its
        audit entry, together, as ``audit.actor``; returns the generation. The actor's admin
        level and the company's existence are checked in the same transaction as the write
        (a revocation or a removal racing it wins: nothing written, the refusal logged with
        ``requested``)."""
        sealed = self.vault.seal(secrets.model_dump())
        company = connection.company
        key = self.keys.connection(company)

        def write(work: UnitOfWork) -> int:
            work.require_admin(company, audit.actor)
            generation = self._next_generation(work.pipe, work.pipe.hget(key, "generation"))
            work.begin()
            work.pipe.delete(key, self.keys.access_token(company))
            work.pipe.hset(
                key,
                mapping={
                    "meta": connection.model_dump_json(),
                    "secret": sealed,
                    "generation": generation,
                },
            )
            work.audit(audit)
            return generation

        return self._store.transact(
            self._watched(company),
            write,
            Denied(company, audit.actor, "connection.connect", requested or {}),
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
        return self._open(str(sealed), company), int(generation or 0)

    def _open(self, sealed: str, company: str) -> Secrets:
        data = self.vault.open(sealed, f"the credentials of {company!r}")
        try:
            return Secrets.model_validate(data)
        except ValidationError:
            raise CorruptRecord(f"the credentials of {company!r} are incomplete") from None

    def rotate_refresh_token(
        self, company: str, generation: int, refresh_token: str, refreshed_at: datetime
    ) -> int:
        """Store the newest refresh token if ``generation`` is still the stored one (else
        ``ConcurrentUpdate``: reconnected, disconnected or rotated meanwhile); returns the
        connection's new generation."""
        key = self.keys.connection(company)
        changed = f"the connection of {company!r} changed meanwhile"

        def write(work: UnitOfWork) -> int:
            current, sealed, meta = work.pipe.hmget(key, ["generation", "secret", "meta"])
            if current is None or int(current) != generation or not sealed or not meta:
                raise ConcurrentUpdate(changed)
            old = self._open(str(sealed), company)
            resealed = self.vault.seal({**old.model_dump(), "refresh_token": refresh_token})
            updated = parse(Connection, meta, "connection").model_copy(
                update={"refreshed_at": refreshed_at}
            )
            new = self._next_generation(work.pipe, current)
            work.begin()
            work.pipe.hset(
                key,
                mapping={"secret": resealed, "generation": new, "meta": updated.model_dump_json()},
            )
            return new

        try:
            return self._store.transact([key], write, company=company)
        except NotFound:  # the company was removed meanwhile: its connection with it
            raise ConcurrentUpdate(changed) from None

    def cache_access_token(
        self, company: str, generation: int, access_token: str, ttl_ms: int
    ) -> bool:
        """Cache an access token (sealed, expiring after ``ttl_ms``) if the connection is still
        the one at ``generation``; returns whether it was cached. A token fetched for an older
        connection (reconnected while the refresh was in flight, without a rotated refresh
        token to fail on) is dropped instead of being served for the new one."""
        key, cached = self.keys.connection(company), self.keys.access_token(company)
        sealed = self.vault.seal({"access_token": access_token})

        def write(work: UnitOfWork) -> bool:
            if str(work.pipe.hget(key, "generation")) != str(generation):
                return False
            work.begin()
            work.pipe.set(cached, sealed, px=max(ttl_ms, 1))
            return True

        return self._store.transact([key], write, durable=False)  # a cache: no replica wait

    def mark(
        self, company: str, status: Status, error: str | None, *, generation: int | None = None
    ) -> bool:
        """Set the connection's status; returns whether it was set. With ``generation`` (the
        one a refused refresh started from), only if that is still the stored connection: a
        refusal of an older connection's token does not mark the one an admin connected since.
        """
        key = self.keys.connection(company)

        def write(work: UnitOfWork) -> bool:
            current, raw = work.pipe.hmget(key, ["generation", "meta"])
            if raw is None or (generation is not None and str(current) != str(generation)):
                return False
            meta = parse(Connection, raw, "connection").model_copy(
                update={"status": status, "error": error}
            )
            work.begin()
            work.pipe.hset(key, "meta", meta.model_dump_json())
            return True

        try:
            # Not waiting for replicas: a mark lost in a failover costs one more refused
            # refresh, and a slow replica must not turn the refusal into another error.
            return self._store.transact([key], write, company=company, durable=False)
        except NotFound:
            return False

    def delete(self, company: str, audit: AuditEntry) -> bool:
        """Forget the connection (the company goes back to the sandbox ERP), audited; the
        admin check and the company's existence are checked in the same transaction."""
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

    def companies(self) -> list[str]:
        """Every company with a stored connection (a scan: for rotate-key and imports)."""
        found = []
        for key in self.client.scan_iter(self.keys.pattern("connection"), count=500):
            company = self.keys.company_of("connection", str(key))
            if company is not None:  # not an access token or a lock
                found.append(company)
        return sorted(found)

    def reseal(self, company: str) -> bool:
        """Re-encrypt the company's secrets with the newest key, compare-and-set (a rotation
        landing between the read and the write makes it read again); returns whether there
        was a secret. The generation stays: the secrets' content did not change."""
        key = self.keys.connection(company)

        def write(work: UnitOfWork) -> bool:
            sealed = work.pipe.hget(key, "secret")
            if not sealed:
                return False
            resealed = self.vault.rotate(str(sealed))
            work.begin()
            work.pipe.hset(key, "secret", resealed)
            return True

        try:
            return self._store.transact([key], write, company=company)
        except NotFound:  # removed meanwhile (or a leftover of a removed company): not ours
            return False

    def rotate_keys(self) -> int:
        """Re-encrypt every stored connection's secrets with the newest key; returns how many."""
        return sum(self.reseal(company) for company in self.companies())
