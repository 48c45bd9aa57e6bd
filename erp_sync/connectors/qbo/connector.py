"""The QuickBooks Online connector: the connector contract over Intuit's Accounting API.

Vendors and jobs are read directly: change data capture (``cdc``) while the watermark is inside
its 30-day window, a paginated query (STARTPOSITION / MAXRESULTS 1000, in ``Id`` order so a
record changed mid-listing never shifts another out of its page) on the first sync or after a
long pause. A full CDC response (1,000 objects) is followed by another from its newest change,
so a busy window is read in slices instead of being truncated.

Job costs and payments name their project per line, and the API cannot list one project's
lines, so the company's changed transactions are read once into the ERP mirror
(``erp_sync.db.mirror``) and each project pages its own lines from there. One worker refreshes
a company's mirror at a time (a Redis lock, renewed per page); projects arriving meanwhile wait
for it and then read what it wrote. A refresh that must wait for the rate limit has already
committed its pages and its cursor: the next call resumes it.

Watermarks are Intuit's own clock (each response's ``time``) less ``OVERLAP`` seconds, so a
change committed while we read is read again next time rather than missed; re-reading is
harmless (the Procore side writes only what differs).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from config.keys import KeySpace
from erp_sync.connectors.base import Connector, Page, Record
from erp_sync.connectors.qbo import mapping
from erp_sync.connectors.qbo.api import PAGE, QboApi
from erp_sync.db import Database
from erp_sync.db.mirror import Line, Mirror
from erp_sync.errors import ErpFault, MustWait
from erp_sync.infra import lua
from erp_sync.throttle.inflight import RequestSlots

CDC_WINDOW = timedelta(days=29, hours=12)  # Intuit's is 30 days; a margin for clock skew
OVERLAP = timedelta(seconds=60)
FRESH = 15.0  # seconds a refreshed mirror serves project syncs without asking the ERP again
MIRROR = "quickbooks_online"
LOCK_MS = 120_000
SWEEP = "_sweep"  # a full re-read's last step: mark what it did not see as deleted
log = logging.getLogger("erp_sync.worker")


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


def parse_time(value: Any) -> datetime | None:
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _mark(body: dict[str, Any]) -> str:
    """The watermark a listing that started with this response stores: Intuit's time less
    the overlap (the local clock if the response has none)."""
    return iso((parse_time(body.get("time")) or datetime.now(UTC)) - OVERLAP)


def _updated(entity: dict[str, Any]) -> str:
    meta = entity.get("MetaData") or {}
    return str(meta.get("LastUpdatedTime") or "")


def cdc_groups(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Entities of a CDC response by name (``CDCResponse[0].QueryResponse[*].<Entity>``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    try:
        responses = body["CDCResponse"][0]["QueryResponse"]
    except (KeyError, IndexError, TypeError):
        raise ErpFault("QuickBooks Online sent a CDC response without CDCResponse") from None
    for part in responses or []:
        for name, value in part.items():
            if isinstance(value, list):
                groups.setdefault(name, []).extend(v for v in value if isinstance(v, dict))
    return groups


def query_rows(body: dict[str, Any], entity: str) -> list[dict[str, Any]]:
    response = body.get("QueryResponse")
    if not isinstance(response, dict):
        raise ErpFault(f"QuickBooks Online sent a query response without QueryResponse ({entity})")
    return [r for r in response.get(entity) or [] if isinstance(r, dict)]


class QboConnector(Connector):
    """One company's QuickBooks Online (self-throttling: a token per HTTP request)."""

    family = "quickbooks_online"
    # Objects in a full CDC response (Intuit's cap): a response this big is followed by
    # another from its newest change. A class attribute so a test can shrink it with the fake's.
    cdc_max = PAGE

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        db: Database,
        company: str,
        api: QboApi,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.keys, self.company, self.api = client, keys, company, api
        self.mirror = Mirror(db, company)
        self.sleep = sleep
        self._rebuilt = False

    def throttle(self, take: Callable[[], float], requests: int | None) -> None:
        self.api.take = take
        if requests is not None:
            self.api.slots = RequestSlots(self.client, self.keys, self.company, requests)

    # --- the contract -----------------------------------------------------------------------
    def vendors(self, since: str | None, cursor: str | None) -> Page:
        return self._listing("Vendor", mapping.vendor, since, cursor)

    def jobs(self, since: str | None, cursor: str | None) -> Page:
        # Every Customer: a Project is one with IsProject, and a project closed since the last
        # sync must still be read (as inactive), so no IsProject filter in the query either.
        return self._listing("Customer", mapping.job, since, cursor, keep=mapping.is_project)

    def standard_cost_codes(self, since: str | None, cursor: str | None) -> Page:
        return Page([], None, watermark=since)  # exported to QBO as Items, never read from it

    def project_cost_codes(self, job: str, since: str | None, cursor: str | None) -> Page:
        return Page([], None, watermark=since)

    def job_costs(self, job: str, since: str | None, cursor: str | None) -> Page:
        return self._lines("job_costs", job, since, cursor)

    def bill_payments(self, job: str, since: str | None, cursor: str | None) -> Page:
        return self._lines("payments", job, since, cursor)

    # --- vendors and jobs: CDC or query -------------------------------------------------------
    def _listing(
        self,
        entity: str,
        to_record: Callable[[dict[str, Any]], Record],
        since: str | None,
        cursor: str | None,
        keep: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> Page:
        state: dict[str, Any] = json.loads(cursor) if cursor else {}
        start_at = parse_time(since) if since else None
        if not state:
            recent = start_at is not None and datetime.now(UTC) - start_at < CDC_WINDOW
            state = {"m": "cdc" if recent else "query", "since": since, "start": 1}
        if state["m"] == "cdc":
            body = self.api.cdc([entity], state["since"])
            rows = cdc_groups(body).get(entity, [])
        else:
            # Name lists hide inactive records unless the query names Active.
            where = " where Active in (true, false)"
            if state["since"]:
                op = ">=" if state.get("ge") else ">"
                where += f" and Metadata.LastUpdatedTime {op} '{state['since']}'"
            body = self.api.query(
                f"select * from {entity}{where} orderby Id "
                f"startposition {state['start']} maxresults {PAGE}"
            )
            rows = query_rows(body, entity)
        mark = state.get("mark") or _mark(body)
        items = [to_record(r) for r in rows if not mapping.deleted(r) and keep(r)]
        gone = [str(r["Id"]) for r in rows if mapping.deleted(r) and "Id" in r]
        if len(rows) < (PAGE if state["m"] == "query" else self.cdc_max):
            return Page(items, None, watermark=mark, deleted=gone)
        if state["m"] == "query":
            after = {**state, "start": state["start"] + PAGE, "mark": mark}
        else:
            newest = max((_updated(r) for r in rows), default="")
            if not newest or newest == state["since"]:  # 1,000 changes in one instant
                # The query reads that instant again (>=): a `>` would skip its other changes.
                after = {
                    "m": "query",
                    "since": state["since"],
                    "start": 1,
                    "mark": mark,
                    "ge": True,
                }
            else:
                after = {**state, "since": newest, "mark": mark}
        return Page(items, json.dumps(after, sort_keys=True), watermark=mark, deleted=gone)

    # --- job costs and payments: through the mirror -------------------------------------------
    def _lines(self, kind: str, job: str, since: str | None, cursor: str | None) -> Page:
        if cursor is None:
            self.refresh()
        after = int(cursor or since or 0)
        items, gone, last = self.mirror.page(kind, job, after, PAGE)
        more = len(items) + len(gone) == PAGE and last is not None
        mark = str(last if last is not None else after)
        return Page(items, mark if more else None, watermark=mark, deleted=gone)

    def prepare_full_listing(self) -> None:
        """Before a reconciliation: re-read the mirror in full (once per connector), so a
        transaction deleted in QuickBooks while no incremental read could see it (a pause
        past the CDC window) is found and its lines marked deleted."""
        if not self._rebuilt:
            self.refresh(full=True)
            self._rebuilt = True

    def refresh(self, max_age: float = FRESH, full: bool = False) -> None:
        """Bring the company's mirror up to date, unless another worker did so just now.

        ``full``: read every transaction again (not just the changes) and mark the lines of
        transactions that no longer exist as deleted. A refresh whose watermark has left the
        CDC window does this by itself: a query cannot see deletions, a full re-read can.
        """
        if not full and self._fresh(*self.mirror.state(MIRROR), max_age):
            return
        lock = self.keys.mirror_lock(self.company)
        holder = uuid.uuid4().hex
        waited = 0.0
        while not self.client.set(lock, holder, nx=True, px=LOCK_MS):
            if waited > 60:
                raise MustWait(5.0, "another worker's refresh of the company's ERP mirror")
            self.sleep(0.1)
            waited += 0.1
        renew_script = lua.load(self.client, "lease_renew")

        def renew() -> None:
            # Only while the lock is still ours: a refresh whose lease lapsed stops at once
            # (it committed its pages and cursor) rather than write beside the one that took
            # the lock over; two writers could number lines alike and a project skip some.
            if not int(renew_script(keys=[lock], args=[holder, LOCK_MS])):
                raise MustWait(1.0, "the company's ERP mirror lock (its lease lapsed)")

        try:
            # Read under the lock: a refresh that finished just before we took it is seen.
            state, refreshed = self.mirror.state(MIRROR)
            if not full and self._fresh(state, refreshed, max_age):
                return
            self._refresh(state, full, renew)
        finally:
            lua.load(self.client, "compare_and_delete")(keys=[lock], args=[holder])

    @staticmethod
    def _fresh(state: dict[str, Any], refreshed: datetime | None, max_age: float) -> bool:
        return (
            refreshed is not None
            and not state.get("cursor")
            and (datetime.now(UTC) - refreshed).total_seconds() < max_age
        )

    def _refresh(self, state: dict[str, Any], full: bool, renew: Callable[[], None]) -> None:
        cursor: dict[str, Any] = state.get("cursor") or {}
        mark = state.get("mark")
        start_at = parse_time(mark) if mark else None
        entities = [*mapping.COST_ENTITIES, mapping.PAYMENT_ENTITY]
        recent = start_at is not None and datetime.now(UTC) - start_at < CDC_WINDOW
        if not cursor and (full or (mark and not recent)):
            cursor = {"m": "query", "full": True}  # re-read everything, then sweep
            self.client.delete(self._seen)
        if cursor.get("m") == "cdc" or (not cursor and recent):
            since = str(cursor.get("since") or mark)
            while True:
                body = self.api.cdc(entities, since)
                new_mark = cursor.get("mark") or _mark(body)
                groups = cdc_groups(body)
                count = sum(len(v) for v in groups.values())
                newest = max((_updated(r) for v in groups.values() for r in v), default="")
                if count >= self.cdc_max and (not newest or newest == since):
                    # A full response within one instant: CDC cannot page past it, so this
                    # refresh reads the window with the paginated query instead; a query
                    # cannot see deletions, so the ones this response holds are kept first.
                    cursor = {"m": "query", "mark": new_mark}
                    self._apply(
                        {e: [r for r in v if mapping.deleted(r)] for e, v in groups.items()},
                        {"mark": mark, "cursor": cursor},
                        completed=False,
                    )
                    break
                more = count >= self.cdc_max
                nxt = {"m": "cdc", "since": newest, "mark": new_mark} if more else None
                self._apply(
                    groups, {"mark": mark if more else new_mark, "cursor": nxt}, completed=not more
                )
                renew()
                if not more:
                    return
                since, cursor = newest, nxt or {}
        self._query_pages(cursor, mark, entities, renew)

    @property
    def _seen(self) -> str:
        return self.keys.mirror_seen(self.company)

    def _query_pages(
        self,
        cursor: dict[str, Any],
        mark: str | None,
        entities: list[str],
        renew: Callable[[], None],
    ) -> None:
        """The paginated read (resumable from ``cursor``); a full one ends with the sweep."""
        full = bool(cursor.get("full"))
        new_mark = cursor.get("mark")
        read = int(cursor.get("read", 0))  # rows a full read added to the seen set so far
        todo = (
            []
            if cursor.get("entity") == SWEEP
            else entities[entities.index(cursor["entity"]) :]
            if cursor.get("entity")
            else entities
        )
        start = int(cursor.get("start", 1))
        for entity in todo:
            while True:
                where = f" where Metadata.LastUpdatedTime > '{mark}'" if mark and not full else ""
                body = self.api.query(
                    f"select * from {entity}{where} orderby Id "
                    f"startposition {start} maxresults {PAGE}"
                )
                new_mark = new_mark or _mark(body)
                rows = query_rows(body, entity)
                more = len(rows) == PAGE
                last = entity == todo[-1] and not more
                following = (
                    SWEEP
                    if last and full
                    else None
                    if last
                    else entity
                    if more
                    else todo[todo.index(entity) + 1]
                )
                if full and rows:
                    read += int(
                        self.client.sadd(self._seen, *(f"{entity}:{r.get('Id')}" for r in rows))
                    )
                    self.client.expire(self._seen, 86_400)
                nxt = (
                    None
                    if following is None
                    else {
                        "m": "query",
                        "full": full,
                        "mark": new_mark,
                        "entity": following,
                        "start": start + PAGE if more else 1,
                        "read": read,
                    }
                )
                self._apply(
                    {entity: rows},
                    {"mark": new_mark if nxt is None else mark, "cursor": nxt},
                    completed=nxt is None,
                )
                renew()
                if not more:
                    break
                start += PAGE
            start = 1
        if full:
            self._sweep(new_mark, read)

    def _sweep(self, new_mark: str | None, read: int) -> None:
        """After a full read: the lines of transactions it did not see are marked deleted,
        once QuickBooks confirms each is gone. Never on a partial record of what was read: a
        seen set that lost members (it expired, or Redis lost it) sweeps nothing."""
        seen = {str(t) for t in self.client.smembers(self._seen)}
        gone: dict[str, list[Line] | None] = {}
        if len(seen) < read:
            log.warning(
                "company=%s: the mirror's full read lost its record of what it read "
                "(%d of %d); no deletions swept this time",
                self.company,
                len(seen),
                read,
            )
        else:
            gone = {t: None for t in self._confirmed_gone(self.mirror.live_txns() - seen)}
        self.mirror.apply(MIRROR, {"mark": new_mark, "cursor": None}, gone, completed=True)
        self.client.delete(self._seen)

    def _confirmed_gone(self, candidates: set[str]) -> set[str]:
        """The candidates QuickBooks no longer has: a row deleted while the full read paged
        shifts the next page by one, so a transaction can go unseen without being gone."""
        by_entity: dict[str, list[str]] = {}
        for txn in candidates:
            entity, _, erp_id = txn.partition(":")
            by_entity.setdefault(entity, []).append(erp_id)
        still: set[str] = set()
        for entity, ids in by_entity.items():
            for start in range(0, len(ids), 100):
                chunk = ", ".join(f"'{i}'" for i in ids[start : start + 100])
                body = self.api.query(
                    f"select * from {entity} where Id in ({chunk}) maxresults {PAGE}"
                )
                still |= {f"{entity}:{r.get('Id')}" for r in query_rows(body, entity)}
        return candidates - still

    def _apply(
        self, groups: dict[str, list[dict[str, Any]]], state: dict[str, Any], completed: bool
    ) -> None:
        """Write one response's transactions and the mirror's progress in one transaction.

        A payment lands on the projects its Bills' lines name: Bills of this same response as
        just read, the others as the mirror holds them.
        """
        txns: dict[str, list[Line] | None] = {}
        for entity in mapping.COST_ENTITIES:
            for row in groups.get(entity, []):
                key = f"{entity}:{row.get('Id')}"
                txns[key] = None if mapping.deleted(row) else mapping.cost_lines(entity, row)
        payments = groups.get(mapping.PAYMENT_ENTITY, [])
        if payments:
            bills = {
                f"Bill:{b}"
                for p in payments
                if not mapping.deleted(p)
                for b, _ in mapping.paid_bills(p)
            }
            projects = self.mirror.projects_of(b for b in bills if b not in txns)
            for bill in bills & set(txns):
                projects[bill] = {line.project for line in txns[bill] or []}
            for row in payments:
                key = f"{mapping.PAYMENT_ENTITY}:{row.get('Id')}"
                txns[key] = None if mapping.deleted(row) else mapping.payment_lines(row, projects)
        self.mirror.apply(MIRROR, state, txns, completed=completed)
