"""The settings store: companies, projects, users, versioned sync settings and the audit log.

A settings change is one optimistic transaction (WATCH/MULTI): the new settings with a bumped
version, one audit entry and one message on the change stream commit together or not at all. Two
admins racing on one company therefore never lose an update: the loser re-reads and re-applies its
change on top of the winner's. Every check (company exists, permission, allowed values, ERP
capabilities) runs before anything is queued, so rejected input writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from pydantic import ValidationError
from redis.connection import Connection

from config.env import get_settings
from config.keys import RESERVED_IDS, KeySpace
from config.models import (
    CAPABILITIES,
    TOGGLES,
    AuditEntry,
    Company,
    Erp,
    PaymentsFrequency,
    PermissionLevel,
    Project,
    Removed,
    StoredSettings,
    SyncKind,
    SyncSettings,
    first_error,
    parse,
)
from config.validation import casefold_key, shorten
from erp_sync.control.access import level_from, require_level
from erp_sync.control.inputs import name as valid_name
from erp_sync.control.inputs import timezone as valid_timezone
from erp_sync.control.inputs import user_id
from erp_sync.control.replicas import ReplicaAck
from erp_sync.control.unit import CHANGE_STREAM_CAP, Denied, UnitOfWork, note_change, transact
from erp_sync.errors import (
    AlreadyExists,
    CorruptRecord,
    InvalidInput,
    NotFound,
    PermissionDenied,
    UnsupportedSetting,
)
from erp_sync.infra import lua

T = TypeVar("T")
Mutator = Callable[[SyncSettings], Mapping[str, Any]]


def utcnow() -> datetime:
    return datetime.now(UTC)


class SettingsStore:
    """Reads and writes one deployment's schedule state; the Redis client is passed in."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        clock: Callable[[], datetime] = utcnow,
        change_stream_maxlen: int = CHANGE_STREAM_CAP,
        os_user: str | None = None,
        ack: ReplicaAck | None = None,
    ) -> None:
        self.client = client
        # Replica acknowledgements every change waits for (None: ERP_SYNC_REDIS_WAIT_*, read
        # when the first change commits; ``replicas.NEVER`` for none).
        self._ack = ack
        # Stamped on every audit entry this store writes (the CLI passes the host user).
        self.os_user = os_user
        self.keys = keys
        self.clock = clock
        self.change_stream_maxlen = change_stream_maxlen

    # --- companies --------------------------------------------------------------------------
    def add_company(
        self,
        company_id: str,
        erp: str,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        actor: str = "operator",
        admin: str | None = None,
    ) -> Company:
        """Create a company with its ERP's default settings (version 1) and tell beat.

        ``admin`` becomes its first admin (only an admin may grant, so this is how one starts).
        An operator action: also recorded in the operator log. An id that differs only in case
        from an existing company's is refused (``config.validation``).
        """
        admin = user_id(admin) if admin is not None else None
        if company_id in RESERVED_IDS:  # refused when made, not when read: an old one still loads
            raise InvalidInput(
                f"{company_id!r} is reserved (one of {', '.join(sorted(RESERVED_IDS))}: the names "
                "of fleet-wide keys); choose another company id"
            )
        try:
            company = Company(
                # The id is a valid name; the model checks it first when it stands in for one.
                id=company_id,
                name=valid_name(name) if name is not None else company_id,
                erp=erp,
                timezone=valid_timezone(timezone),
                created_at=self.clock(),
            )
        except ValidationError as exc:
            raise InvalidInput(_erp_hint(exc, erp)) from None
        settings = StoredSettings(
            company=company.id,
            version=1,
            settings=SyncSettings.defaults_for(company.erp),
            updated_at=company.created_at,
            updated_by=actor,
        )
        entry = AuditEntry(
            at=company.created_at,
            actor=actor,
            action="company.create",
            company=company.id,
            version=1,
            new={
                "erp": company.erp.value,
                "timezone": company.timezone,
                "admin": admin,
                **settings.settings.model_dump(mode="json"),
            },
        )
        fold = casefold_key(company.id)
        self._backfill_folds()

        def write(work: UnitOfWork) -> None:
            pipe = work.pipe
            if pipe.exists(self.keys.company(company.id)):
                raise AlreadyExists(f"company {company.id!r} already exists")
            raw = pipe.hget(self.keys.company_folds, fold)
            other = None if raw is None else str(raw)
            if other not in (None, company.id) and pipe.exists(self.keys.company(str(other))):
                raise AlreadyExists(
                    f"company {other!r} already exists (ids differ only in "
                    "case; ids are compared without case)"
                )
            work.begin()
            pipe.set(self.keys.company(company.id), company.model_dump_json())
            pipe.sadd(self.keys.companies, company.id)
            pipe.hset(self.keys.company_folds, fold, company.id)
            pipe.hdel(self.keys.removed, company.id)  # a re-added id starts afresh
            pipe.set(self.keys.settings(company.id), settings.model_dump_json())
            if admin is not None:
                pipe.hset(self.keys.users(company.id), admin, PermissionLevel.ADMIN.value)
            work.audit(entry)
            work.operator(entry)
            work.change(company.id, 1)

        self.transact([self.keys.company(company.id), self.keys.company_folds], write)
        return company

    def _backfill_folds(self) -> None:
        """Index companies made before case-only collisions were refused (once: afterwards the
        index has an entry for every company, and this is two O(1) reads)."""
        if self.client.hlen(self.keys.company_folds) >= self.client.scard(self.keys.companies):
            return
        for company in self.client.sscan_iter(self.keys.companies, count=1000):
            self.client.hsetnx(self.keys.company_folds, casefold_key(str(company)), str(company))

    def get_company(self, company_id: str) -> Company:
        raw = self.client.get(self.keys.company(company_id))
        if raw is None:
            raise NotFound(f"unknown company {shorten(company_id)}")
        return parse(Company, str(raw), f"company {company_id!r}")

    def removed(self, company_id: str) -> Removed | None:
        """The removal record of a company that was removed (and not added again), or None."""
        raw = self.client.hget(self.keys.removed, company_id)
        return None if raw is None else parse(Removed, str(raw), f"removal of {company_id!r}")

    def outlived(self, company_id: str) -> Removed | None:
        """For reads of what outlives a company (history, audit, security log): None while the
        company exists, its removal record once removed; ``NotFound`` for an id never known."""
        if self.client.exists(self.keys.company(company_id)):
            return None
        gone = self.removed(company_id)
        if gone is None and self.client.exists(
            self.keys.audit(company_id), self.keys.denied(company_id)
        ):  # removed before removals were recorded: its logs are all that is left
            gone = Removed(company=company_id, at=None, by=None, erp=None)
        if gone is None:
            self.get_company(company_id)  # raises NotFound with the usual message
        return gone

    def list_companies(self) -> list[Company]:
        ids = self.company_ids()
        raws = self.client.mget([self.keys.company(i) for i in ids]) if ids else []
        return [parse(Company, r, f"company {i!r}") for i, r in zip(ids, raws, strict=True) if r]

    def company_ids(self) -> list[str]:
        return sorted(str(i) for i in self.client.smembers(self.keys.companies))

    # --- projects and users -----------------------------------------------------------------
    def add_project(self, company_id: str, project_id: str, *, name: str | None = None) -> Project:
        self.get_company(company_id)
        try:
            project = Project(
                company=company_id,
                id=project_id,
                name=valid_name(name) if name is not None else project_id,
                created_at=self.clock(),
            )
        except ValidationError as exc:
            raise InvalidInput(first_error(exc)) from None
        fold = casefold_key(project.id)
        key = self.keys.projects(company_id)

        def write(work: UnitOfWork) -> None:
            stored = [str(p) for p in work.pipe.hkeys(key)]
            if project.id in stored:
                raise AlreadyExists(f"project {project.id!r} already exists in {company_id!r}")
            clash = next((p for p in stored if casefold_key(p) == fold), None)
            if clash is not None:
                raise AlreadyExists(
                    f"project {clash!r} already exists in {company_id!r} (ids "
                    "differ only in case; ids are compared without case)"
                )
            work.begin()
            work.pipe.hset(key, project.id, project.model_dump_json())

        # A transaction like every change: the company must still be there, replicas confirm.
        self.transact([key], write, company=company_id)
        return project

    def list_projects(self, company_id: str) -> list[Project]:
        self.get_company(company_id)
        raw = self.client.hgetall(self.keys.projects(company_id))
        return sorted(
            (parse(Project, v, f"project {k!r}") for k, v in raw.items()),
            key=lambda p: p.id,
        )

    def grant(self, company_id: str, user: str, level: str, *, actor: str = "operator") -> None:
        """Set a user's permission level on the company's ERP Integrations tool (audited)."""
        self.get_company(company_id)
        if level not in set(PermissionLevel):
            raise InvalidInput(f"invalid level {level!r} (one of: {', '.join(PermissionLevel)})")
        user_id(user)

        def write(work: UnitOfWork) -> None:
            old = work.pipe.hget(self.keys.users(company_id), user)
            work.begin()
            work.pipe.hset(self.keys.users(company_id), user, level)
            work.audit(
                AuditEntry(
                    at=self.clock(),
                    actor=actor,
                    action="user.grant",
                    company=company_id,
                    old={"user": user, "level": old},
                    new={"user": user, "level": level},
                ),
            )

        self.transact([self.keys.users(company_id)], write, company=company_id)

    def level_of(self, company_id: str, user: str) -> PermissionLevel:
        user_id(user)
        return level_from(self.client.hget(self.keys.users(company_id), user))

    def require(self, company_id: str, user: str, needed: PermissionLevel) -> None:
        """Raise ``PermissionDenied`` unless ``user`` has at least ``needed`` on the company."""
        require_level(company_id, user, self.level_of(company_id, user), needed)

    # --- settings ---------------------------------------------------------------------------
    def sync_settings(self, company_id: str) -> StoredSettings:
        """A company's stored sync settings (the process environment is ``get_settings()``)."""
        raw = self.client.get(self.keys.settings(company_id))
        if raw is None:
            self.get_company(company_id)
            raise CorruptRecord(f"company {company_id!r} has no stored settings")
        return parse(StoredSettings, str(raw), f"settings of {company_id!r}")

    def update_settings(
        self, company_id: str, actor: str, change: Mapping[str, Any] | Mutator
    ) -> tuple[StoredSettings, bool]:
        """Apply ``change`` (fields to set, or a function of the current settings) as ``actor``.

        Returns the stored settings and whether anything changed; an unchanged result writes
        nothing (no version bump, no audit entry, no message).
        """
        user_id(actor)  # a malformed --as is bad input: refused before the security log
        company = self.get_company(company_id)
        try:
            self.require(company_id, actor, PermissionLevel.ADMIN)
        except PermissionDenied:
            self._record_denied(company_id, actor, change)
            raise
        mutate: Mutator = change if callable(change) else (lambda _s: change)

        def write(work: UnitOfWork) -> tuple[StoredSettings, bool]:
            pipe = work.pipe
            raw = pipe.get(self.keys.settings(company_id))
            if raw is None:
                raise CorruptRecord(f"company {company_id!r} has no stored settings")
            current = parse(StoredSettings, raw, f"settings of {company_id!r}")
            # Re-checked inside the transaction: a demotion racing this write must win.
            work.require_admin(company_id, actor)
            new = merge(current.settings, mutate(current.settings))
            old_d, new_d = current.settings.model_dump(mode="json"), new.model_dump(mode="json")
            diff = {k for k in new_d if new_d[k] != old_d[k]}
            check_supported(company.erp, diff, new)
            if not diff:
                return current, False
            stored = StoredSettings(
                company=company_id,
                version=current.version + 1,
                settings=new,
                updated_at=self.clock(),
                updated_by=actor,
            )
            work.begin()
            pipe.set(self.keys.settings(company_id), stored.model_dump_json())
            work.audit(
                AuditEntry(
                    at=stored.updated_at,
                    actor=actor,
                    action="settings.update",
                    company=company_id,
                    version=stored.version,
                    old={k: old_d[k] for k in sorted(diff)},
                    new={k: new_d[k] for k in sorted(diff)},
                ),
            )
            work.change(company_id, stored.version)
            return stored, True

        try:
            return self.transact(
                [self.keys.settings(company_id), self.keys.users(company_id)],
                write,
                company=company_id,
            )
        except PermissionDenied:  # demoted while this write was being prepared
            self._record_denied(company_id, actor, change)
            raise

    def denied(self, company_id: str, limit: int = 100) -> list[AuditEntry]:
        """Refused settings changes, newest first (``new`` holds what was requested)."""
        self.outlived(company_id)
        raws = self.client.lrange(self.keys.denied(company_id), 0, max(limit, 1) - 1)
        return [parse(AuditEntry, r, "denied entry") for r in raws]

    def _record_denied(
        self, company_id: str, actor: str, change: Mapping[str, Any] | Mutator
    ) -> None:
        """A refused settings change: settings, version, audit and stream stay as they are."""
        requested = {} if callable(change) else dict(change)
        self.record_denied(Denied(company_id, actor, "settings", requested))

    def audit(self, company_id: str, limit: int = 100) -> list[AuditEntry]:
        """The audit log's recent part (Redis), newest first; it outlives a removed company (so
        does ``denied``). Older entries are archived: ``erp_sync.db.audit.AuditArchive``."""
        self.outlived(company_id)
        raws = self.client.lrange(self.keys.audit(company_id), 0, max(limit, 1) - 1)
        return [parse(AuditEntry, r, "audit entry") for r in raws]

    # --- the unit of work -------------------------------------------------------------------
    def transact(
        self,
        watch: list[str],
        write: Callable[[UnitOfWork], T],
        denied: Denied | None = None,
        *,
        company: str | None = None,
        durable: bool = True,
    ) -> T:
        """Run one admin action (``erp_sync.control.unit``): ``write`` reads under WATCH of
        ``watch`` (none: it only writes), ``begin()``s, queues writes and logs; retried until it
        commits without a conflicting writer. Returns what the committing attempt returned.

        An action on a company (``company``, or ``denied``'s) also watches the company record
        and finds it still there on every attempt (else ``NotFound``), so no action racing a
        ``company remove`` writes anything back for the removed id that a company added later
        under it would inherit. A permission refusal (also one met inside the transaction, when
        a demotion raced it) is written to the security log as ``denied`` says, then raised.

        An attempt that writes also bumps the revision of every scope it touched (the company it
        names, what it audited or re-planned, ``work.touch``) and marks it for the database's
        copy, in the same MULTI (``erp_sync.control.snapshot``).

        A ``durable`` action (every admin change) then waits for the replicas' acknowledgement
        (``erp_sync.control.replicas``): ``NotReplicated`` if too few acknowledged in time, the
        change stored on the primary only. Not durable: the security log's rows and what beat
        itself writes (a timed pause's end), which must not stall on a slow replica."""
        scope = company if company is not None else denied.company if denied else None
        if scope is not None:
            watch = [self.keys.company(scope), *watch]

        def attempt(pipe: redis.client.Pipeline) -> T:
            if scope is not None and not pipe.exists(self.keys.company(scope)):
                raise NotFound(f"unknown company {shorten(scope)}")
            work = self._unit(pipe)
            result = write(work)
            touched = work.touched | ({scope} if scope is not None else set())
            if pipe.explicit_transaction and touched:
                note_change(self.client)  # noted before EXEC: a failed one changes no outcome
                # The revision and the mark for the database's copy commit with the change.
                pipe.eval(
                    lua.source("config_bump"),
                    3,
                    self.keys.config_revs,
                    self.keys.config_dirty,
                    self.keys.config_floor,
                    *sorted(touched),
                )
            return result

        try:
            return transact(self.client, watch, attempt, self._confirm if durable else None)
        except PermissionDenied:
            if denied is not None:
                self.record_denied(denied)
            raise

    @property
    def ack(self) -> ReplicaAck:
        """The replica acknowledgements this store's changes wait for."""
        if self._ack is None:
            self._ack = ReplicaAck.from_settings(get_settings())
        return self._ack

    def _confirm(self, connection: Connection, result: object) -> None:
        self.ack.confirm(self.client, connection, result)

    def _unit(self, pipe: redis.client.Pipeline) -> UnitOfWork:
        return UnitOfWork(pipe, self.keys, self.clock, self.os_user, self.change_stream_maxlen)

    def record_denied(self, denied: Denied) -> None:
        """One row in the company's security log for a refused action; the actor has passed the
        user-id validator and ``requested`` is cut short, so a row cannot be forged or huge."""
        requested = {
            str(k)[:64]: v if isinstance(v, bool | int | float | None) else str(v)[:200]
            for k, v in list(denied.requested.items())[:20]
        }
        entry = AuditEntry(
            at=self.clock(),
            actor=user_id(denied.actor),
            action=f"{denied.action}.denied",
            company=denied.company,
            new=requested,
        )
        self.transact([], lambda work: work.denied(entry), durable=False)

    def operator_log(self, limit: int = 100) -> list[AuditEntry]:
        """Operator actions, newest first (the recent part; older ones are archived)."""
        raws = self.client.lrange(self.keys.operator_log, 0, max(limit, 1) - 1)
        return [parse(AuditEntry, r, "operator log entry") for r in raws]


def merge(current: SyncSettings, change: Mapping[str, Any]) -> SyncSettings:
    """``current`` with ``change`` applied, validated (unknown fields and bad values rejected)."""
    unknown = sorted(set(change) - set(SyncSettings.model_fields))
    if unknown:
        raise InvalidInput(
            f"unknown setting {unknown[0]!r} (one of: {', '.join(SyncSettings.model_fields)})"
        )
    try:
        return SyncSettings.model_validate({**current.model_dump(), **change})
    except ValidationError as exc:
        raise InvalidInput(f"invalid {first_error(exc)}") from None


def check_supported(erp: Erp, changed: set[str], new: SyncSettings) -> None:
    """Refuse turning on (or tuning) a sync the ERP does not support; turning one off is fine."""
    supported = CAPABILITIES[erp]
    for field in sorted(changed):
        kind = TOGGLES.get(field, SyncKind.PAYMENTS)
        enabling = field not in TOGGLES or bool(getattr(new, field))
        if (
            field == "payments_for_synced_invoices"
            and new.payments_for_synced_invoices is PaymentsFrequency.NEVER
        ):
            enabling = False
        if enabling and kind not in supported:
            raise UnsupportedSetting(f"{erp.value} does not support {field}")


def _erp_hint(exc: ValidationError, erp: str) -> str:
    if any(e["loc"] == ("erp",) for e in exc.errors()):
        return f"unknown ERP {shorten(erp)} (one of: {', '.join(Erp)})"
    return first_error(exc)
