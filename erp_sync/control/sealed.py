"""Everything stored sealed with ``ERP_SYNC_SECRET_KEY``, in one inventory, and the rotation
that re-encrypts all of it (``erp-sync connection rotate-key``).

- ``connections``: ``connection:<c>`` field ``secret``, the ERP client secret and refresh token;
- ``alert_secrets``: ``alerts:<c>`` field ``<id>``, the rule's ``secret`` (``fernet:`` + the
  sealed signing secret);
- ``access_tokens``: ``connection:<c>:access`` (a STRING with a TTL), a cached ERP access token.

Rotating used to re-encrypt the connections alone, so after the README's steps (a new key
first, ``rotate-key``, the old key dropped) every signed webhook failed: its secret was still
sealed with the dropped key. A new sealed kind is added here, in ``KINDS`` and ``rotate``.

Each re-encryption is a compare-and-set (WATCH of its key, the write in MULTI, through
``SettingsStore.transact``): a token rotation or a rule change landing between the read and the
write makes it read again, so it never writes back an older value. A secret no key opens
(sealed with a key already dropped) is skipped and named, the others are rotated all the same;
a signing secret stored before secrets were sealed is sealed now. The rotation, with its
counts, is one row of the operator log.

The database's copy of the configuration (``config.snapshot``) holds the connections and alert
rules as stored, so it holds sealed values too: ``unopenable`` names those in the copy that the
newest key alone does not open. Until there are none, dropping the old key would make a
``restore-from-db`` bring back secrets no key opens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from config.alerts import AlertRule
from config.env import get_settings
from config.models import AuditEntry, parse
from config.snapshot import Snapshot
from erp_sync.control.connections import ConnectionStore
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import UnitOfWork
from erp_sync.control.vault import Vault
from erp_sync.errors import CorruptRecord, NotFound

KINDS = ("connections", "alert_secrets", "access_tokens")
SEALED = "fernet:"  # the prefix of a sealed AlertRule.secret (older rules hold theirs plain)


def seal_secret(secret: str, vault: Vault | None = None) -> str:
    """A webhook's signing secret as stored: encrypted like the ERP credentials."""
    return SEALED + (vault or Vault.from_settings()).seal({"secret": secret})


def open_secret(stored: str, vault: Vault | None = None) -> str:
    """The signing secret of a stored rule (one stored before sealing is used as it is)."""
    if not stored.startswith(SEALED):
        return stored
    opened = (vault or Vault.from_settings()).open(stored[len(SEALED) :], "an alert's secret")
    return str(opened["secret"])


def newest_key_only() -> Vault:
    """A vault of the first key of ERP_SYNC_SECRET_KEY alone: what is left once the older keys
    are dropped."""
    secret = get_settings().secret_key
    raw = secret.get_secret_value() if secret is not None else ""
    return Vault([k for k in raw.split(",") if k.strip()][:1])


def unopenable(copies: Iterable[Snapshot], newest: Vault) -> list[str]:
    """What in the database's ``copies`` the ``newest`` vault (the first key alone) does not
    open: the connections' secrets and the alert rules' signing secrets, each named."""
    found = []
    for snap in copies:
        values: list[tuple[str, str]] = []
        if snap.connection.get("secret"):
            values.append((f"the connection of {snap.scope!r}", snap.connection["secret"]))
        for alert_id, raw in snap.alerts.items():
            try:
                secret = parse(AlertRule, raw, f"alert {alert_id!r}").secret
            except CorruptRecord:
                secret = "unparsed"
            if secret is not None:
                values.append((f"the secret of alert {alert_id!r} of {snap.scope!r}", secret))
        for what, sealed in values:
            if sealed.startswith(SEALED):
                sealed = sealed[len(SEALED) :]
            elif what.startswith("the secret of alert"):  # stored plain: not yet sealed
                found.append(what)
                continue
            try:
                newest.open(sealed, what)
            except CorruptRecord:
                found.append(what)
    return found


@dataclass
class Rotated:
    """How many of each kind were re-encrypted, and what no key could open."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    unreadable: list[str] = field(default_factory=list)


class SealedSecrets:
    """The deployment's sealed values (client and store passed in, the vault given)."""

    def __init__(self, store: SettingsStore, vault: Vault) -> None:
        self.store, self.keys, self.client, self.vault = store, store.keys, store.client, vault

    def rotate(self) -> Rotated:
        """Re-encrypt every sealed value with the vault's first key; logged with its counts."""
        done = Rotated()
        connections = ConnectionStore(self.client, self.keys, self.vault, self.store)
        for company in connections.companies():
            try:
                done.counts["connections"] += connections.reseal(company)
            except CorruptRecord:
                done.unreadable.append(f"the connection of {company!r}")
            done.counts["access_tokens"] += self._reseal_access_token(company)
        for company in self._alert_companies():
            done.counts["alert_secrets"] += self._reseal_alerts(company, done.unreadable)
        logged: dict[str, object] = dict(done.counts)
        if done.unreadable:
            logged["unreadable"] = len(done.unreadable)
        entry = AuditEntry(
            at=self.store.clock(),
            actor="operator",
            action="connection.rotate_key",
            company="*",
            new=logged,
        )
        self.store.transact([], lambda work: work.operator(entry))
        return done

    def _reseal_access_token(self, company: str) -> bool:
        """The cached access token re-encrypted, its expiry kept; one no key opens is deleted
        (a cache: the next sync refreshes it)."""
        key = self.keys.access_token(company)

        def write(work: UnitOfWork) -> bool:
            sealed, ttl = work.pipe.get(key), int(work.pipe.pttl(key))
            if not sealed or ttl <= 0:
                return False
            try:
                resealed: str | None = self.vault.rotate(str(sealed))
            except CorruptRecord:
                resealed = None
            work.begin()
            if resealed is None:
                work.pipe.delete(key)
                return False
            work.pipe.set(key, resealed, px=ttl)
            return True

        return self.store.transact([key], write, durable=False)

    def _alert_companies(self) -> list[str]:
        found = []
        for key in self.client.scan_iter(self.keys.pattern("alerts"), count=500):
            company = self.keys.company_of("alerts", str(key))
            if company is not None:  # not a company's state or log, nor the deadlines
                found.append(company)
        return sorted(found)

    def _reseal_alerts(self, company: str, unreadable: list[str]) -> int:
        """Every sealed signing secret of the company's rules, in one compare-and-set."""
        key = self.keys.alerts(company)

        def write(work: UnitOfWork) -> tuple[int, list[str]]:
            changed: dict[str, str] = {}
            lost: list[str] = []
            for alert_id, raw in work.pipe.hgetall(key).items():
                rule = parse(AlertRule, str(raw), f"alert {alert_id!r}")
                if rule.secret is None:
                    continue
                try:
                    sealed = (
                        self.vault.rotate(rule.secret[len(SEALED) :])
                        if rule.secret.startswith(SEALED)
                        else self.vault.seal({"secret": rule.secret})  # stored before sealing
                    )
                except CorruptRecord:
                    lost.append(f"the secret of alert {alert_id!r} of {company!r}")
                    continue
                resealed = rule.model_copy(update={"secret": SEALED + sealed})
                changed[str(alert_id)] = resealed.model_dump_json()
            if changed:
                work.begin()
                for alert_id, value in changed.items():
                    work.pipe.hset(key, alert_id, value)
            return len(changed), lost

        try:
            count, lost = self.store.transact([key], write, company=company)
        except NotFound:  # removed meanwhile (or a leftover of a removed company): not ours
            return 0
        except CorruptRecord as exc:  # a rule that does not parse: named, not rotated
            unreadable.append(str(exc))
            return 0
        unreadable.extend(lost)
        return count
