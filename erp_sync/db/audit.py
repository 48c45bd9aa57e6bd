"""Audit entries archived out of Redis (``audit_log``), and the archiver that moves them there.

A settings change writes its audit entry in the same Redis transaction as the settings, so the
recent log lives in Redis: each company's audit and security (``denied``) lists and the operator
log keep their newest ``ERP_SYNC_AUDIT_KEEP`` entries, and the hourly housekeeping task
(``erp_sync.archive_audit``) moves older ones here. Archiving a list, one batch at a time:

1. read the oldest entries from its tail (``LRANGE -n -1``);
2. insert them; an entry already archived is skipped (its digest is unique per kind), so a
   rerun after a crash inserts nothing twice;
3. trim from the tail exactly those entries that are still there (``audit_trim.lua``).

Writers only push at the head, so a push while a batch is archived never moves it; the store's
hard cap (``AUDIT_CAP``, the backstop when this task does not run) trims the tail, which is why
step 3 compares what it trims with what was inserted. An entry can sit in both places between
steps 2 and 3; readers skip the archived copy of anything Redis still shows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal

import redis
from sqlalchemy import Row, select
from sqlalchemy.dialects import postgresql, sqlite

from config.keys import KeySpace
from config.models import AuditEntry, parse
from erp_sync.db.engine import Database
from erp_sync.db.schema import audit_log
from erp_sync.errors import CorruptRecord, DatabaseError
from erp_sync.infra import lua

Kind = Literal["audit", "denied", "operator"]
KINDS: tuple[Kind, ...] = ("audit", "denied", "operator")
BATCH = 500  # entries per read, insert and trim (a few hundred KB at most per round trip)
log = logging.getLogger("erp_sync.worker")


def digest(entry: AuditEntry) -> str:
    """The entry's identity in the archive: SHA-256 of its canonical JSON."""
    return hashlib.sha256(entry.model_dump_json().encode()).hexdigest()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(kind: Kind, raw: str, archived_at: datetime) -> dict[str, Any]:
    try:
        entry = parse(AuditEntry, raw, "audit entry")
        key = digest(entry)
    except CorruptRecord:  # archived as found, so it neither blocks the list nor is lost
        entry = AuditEntry(
            at=archived_at, actor="", action="corrupt", company="", new={"raw": raw[:4000]}
        )
        key = hashlib.sha256(raw.encode()).hexdigest()
    return {
        "kind": kind,
        "digest": key,
        "company": entry.company,
        "at": _utc(entry.at),
        "actor": entry.actor,
        "os_user": entry.os_user,
        "action": entry.action,
        "version": entry.version,
        "old": json.dumps(entry.old, sort_keys=True),
        "new": json.dumps(entry.new, sort_keys=True),
        "archived_at": archived_at,
    }


def _entry(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        at=_utc(row.at),
        actor=row.actor,
        action=row.action,
        company=row.company,
        version=row.version,
        old=json.loads(row.old),
        new=json.loads(row.new),
        os_user=row.os_user,
    )


class AuditArchive:
    """The deployment's archived audit entries."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, kind: Kind, raws: Sequence[str]) -> int:
        """Archive entries as read from a list (newest first); returns how many were new."""
        if not raws:
            return 0
        now = datetime.now(UTC)
        rows = [_row(kind, raw, now) for raw in reversed(raws)]  # oldest first: ids in order

        def write() -> int:
            with self.db.engine.begin() as conn:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                stmt = (
                    dialect.insert(audit_log)
                    .on_conflict_do_nothing(index_elements=["kind", "digest"])
                    .returning(audit_log.c.id)
                )
                return len(conn.execute(stmt, rows).all())

        return self.db.guard(write)

    def older(
        self, kind: Kind, company: str | None, limit: int, shown: Sequence[AuditEntry] = ()
    ) -> list[AuditEntry]:
        """Archived entries, newest first, leaving out those in ``shown`` (Redis' part)."""
        skip = {digest(e) for e in shown}
        t = audit_log
        query = select(t).where(t.c.kind == kind)
        if company is not None:
            query = query.where(t.c.company == company)
        query = query.order_by(t.c.id.desc()).limit(limit + len(skip))

        def read() -> list[AuditEntry]:
            with self.db.engine.connect() as conn:
                rows = [r for r in conn.execute(query) if r.digest not in skip]
            return [_entry(r) for r in rows[:limit]]

        return self.db.guard(read)

    def extend(
        self, kind: Kind, company: str | None, recent: list[AuditEntry], limit: int
    ) -> tuple[list[AuditEntry], str | None]:
        """``recent`` (from Redis, newest first) continued by archived entries up to ``limit``
        in all; with the database unavailable, ``recent`` and a one-line warning."""
        if len(recent) >= limit:
            return recent[:limit], None
        try:
            return recent + self.older(kind, company, limit - len(recent), recent), None
        except DatabaseError as exc:
            return recent, f"warning: older entries could not be read: {exc}"


def archive_list(
    client: redis.Redis, key: str, kind: Kind, archive: AuditArchive, keep: int, batch: int = BATCH
) -> int:
    """Move the entries of the list ``key`` beyond its newest ``keep`` into the archive;
    returns how many left Redis."""
    trim = lua.load(client, "audit_trim")
    moved = 0
    while (excess := int(client.llen(key)) - keep) > 0:
        raws = [str(r) for r in client.lrange(key, -min(batch, excess), -1)]
        archive.insert(kind, raws)
        trimmed = int(trim(keys=[key], args=raws))
        moved += trimmed
        if trimmed == 0:  # another archiver trimmed them first: it also does the rest
            break
    return moved


def _lists(client: redis.Redis, keys: KeySpace) -> Iterator[tuple[str, Kind]]:
    """Every audit list (also those of removed companies, whose logs outlive them)."""
    yield keys.operator_log, "operator"
    scans: tuple[tuple[str, Kind], ...] = (
        (keys.audit("*"), "audit"),
        (keys.denied("*"), "denied"),
    )  # ids hold no glob character
    for pattern, kind in scans:
        for key in client.scan_iter(match=pattern, count=1000, _type="list"):
            yield str(key), kind


def archive_all(
    client: redis.Redis, keys: KeySpace, archive: AuditArchive, keep: int
) -> dict[str, int]:
    """Archive every list's entries beyond ``keep``; returns entries moved per kind."""
    moved: dict[str, int] = dict.fromkeys(KINDS, 0)
    lists = _lists(client, keys)
    while chunk := list(islice(lists, 1000)):  # one round trip of LLENs per 1000 lists
        with client.pipeline(transaction=False) as pipe:
            for key, _ in chunk:
                pipe.llen(key)
            lengths = pipe.execute()
        for (key, kind), length in zip(chunk, lengths, strict=True):
            if int(length) > keep:
                moved[kind] += archive_list(client, key, kind, archive, keep)
    return moved
