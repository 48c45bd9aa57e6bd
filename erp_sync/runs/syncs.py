"""The syncs as plain functions: ERP connector in, Procore-side database out, no Celery.

A sync reads each of its streams incrementally (from the stored watermark) and writes every page
into the database in one transaction (``RecordStore.write_page``: a page is all written or not
at all); it stores the new watermarks (in Redis) only after every page was written. A sync
killed half-way therefore re-reads from the old watermarks next time and the upserts make that
harmless: nothing is lost and nothing is duplicated. A sync with nothing new writes nothing at
all (not a row, not even the watermark).

A project's Procore id is its ERP job id (the project is linked to that job).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.connectors.base import Connector, Page, Record, pages
from erp_sync.db import Counts, Database, Drift, RecordStore
from erp_sync.errors import MustWait, SyncTimedOut, TenantGone
from erp_sync.infra import lua
from erp_sync.runs.tenant import Tenant, check, gone_error

Fetch = Callable[[str | None, str | None], Page]
RESUME = "_resume"  # where a sync that stopped early records how far it got


@dataclass(frozen=True)
class Stream:
    """One incremental listing and the Procore-side collection (and project) it lands in."""

    collection: str
    project: str | None
    fetch: Fetch

    @property
    def name(self) -> str:
        """The stream's key among the sync's watermarks."""
        return f"{self.collection}:{self.project}" if self.project else self.collection


def streams(kind: SyncKind, connector: Connector, project: str | None) -> list[Stream]:
    """What a sync of ``kind`` reads; project-level kinds need ``project``."""
    if kind is SyncKind.VENDORS:
        return [Stream("vendors", None, connector.vendors)]
    if kind is SyncKind.JOBS:
        return [Stream("jobs", None, connector.jobs)]
    if project is None:
        raise ValueError(f"{kind.value} is a project-level sync and needs a project")
    if kind is SyncKind.JOB_COSTS:
        return [
            Stream("cost_codes", None, connector.standard_cost_codes),
            Stream("project_cost_codes", project, partial(connector.project_cost_codes, project)),
            Stream("job_costs", project, partial(connector.job_costs, project)),
        ]
    return [Stream("payments", project, partial(connector.bill_payments, project))]


def run_sync(
    client: redis.Redis,
    keys: KeySpace,
    db: Database,
    company: str,
    kind: SyncKind,
    project: str | None,
    connector: Connector,
    deadline: float | None = None,
    watermarks: str | None = None,
    lost: Callable[[], bool] | None = None,
    tenant: Tenant | None = None,
) -> Counts:
    """Sync ``kind`` for ``company`` (and ``project``); returns counts over all streams.

    ``deadline`` (a ``time.monotonic()`` value) is the soft time limit, checked between pages so
    the sync stops at a clean point on any worker pool (thread pools have no Celery time limits).
    ``watermarks`` is the stored watermark value when the caller has already read it (``""``
    for none), saving a round trip. ``lost`` says when the run's lock is no longer surely its
    own: the sync then stops between pages too, so it never overlaps a run that took the lock.

    A sync that stops early (``MustWait``: it is deferred; ``SyncTimedOut``) saves how far it
    got: the watermarks of the streams it finished and, under ``_resume``, the stream, the
    watermark it read from and the next page's cursor. Its rerun continues from there instead
    of re-reading every page, so a sync on a throttled ERP makes progress across deferrals.
    A database that is down (``DatabaseUnavailable``) saves nothing: the rerun starts over from
    the old watermarks, and the pages already committed compare unchanged.

    With a ``tenant`` (the runner always gives one), every watermark write checks in the same
    step that the run's company (and project) is still the one it started for; when it is not,
    nothing is stored and ``TenantGone`` is raised (a removed company's sync must not leave
    its watermark to a company added later under the id). Without one the write is plain
    (tools and tests that sync outside a run).
    """
    store = RecordStore(db, company)
    mark_key = keys.cursor(company, kind.value, project)
    save_marks = _saver(client, keys, company, mark_key, tenant)
    raw = client.get(mark_key) if watermarks is None else watermarks
    old_marks: dict[str, Any] = json.loads(raw) if raw else {}
    resume: dict[str, Any] | None = old_marks.pop(RESUME, None)
    resumed = resume is not None
    marks = dict(old_marks)
    total = Counts()
    todo = streams(kind, connector, project)
    if resume is not None and resume.get("stream") in {s.name for s in todo}:
        todo = todo[[s.name for s in todo].index(resume["stream"]) :]
    else:
        resume = None
    for stream in todo:
        since = resume["since"] if resume else old_marks.get(stream.name)
        cursor = resume["cursor"] if resume else None
        resume = None
        try:
            for page in pages(partial(stream.fetch, since), cursor):
                if tenant is not None:  # a removed tenant's sync writes no further page
                    check(client, keys, company, tenant)
                total.add(
                    store.write_page(stream.collection, stream.project, page.items, page.deleted)
                )
                if page.next_cursor is None:
                    if page.watermark is not None:
                        marks[stream.name] = page.watermark
                    break
                cursor = page.next_cursor
                if deadline is not None and time.monotonic() > deadline:
                    raise SyncTimedOut(
                        f"{kind.value} sync of {company!r} passed its soft time limit; it "
                        "stopped between pages and resumes from there next run"
                    )
                if lost is not None and lost():
                    raise SyncTimedOut(
                        f"{kind.value} sync of {company!r} lost its run lock (a stall longer "
                        "than the lock's TTL, or a run far past the visibility timeout); it "
                        "stopped between pages and resumes from there next run"
                    )
        except (MustWait, SyncTimedOut):
            save_marks(
                json.dumps(
                    {**marks, RESUME: {"stream": stream.name, "since": since, "cursor": cursor}},
                    sort_keys=True,
                ),
            )
            raise
    if marks != old_marks or resumed:
        save_marks(json.dumps(marks, sort_keys=True))
    return total


def _saver(
    client: redis.Redis, keys: KeySpace, company: str, mark_key: str, tenant: Tenant | None
) -> Callable[[str], None]:
    """How this sync stores its watermarks: checked against ``tenant`` when there is one."""
    if tenant is None:

        def plain(value: str) -> None:
            client.set(mark_key, value)

        return plain
    script = lua.load(client, "watermark_save")
    where = [mark_key, keys.company(company), keys.projects(company)]

    def save(value: str) -> None:
        answer = script(keys=where, args=[value, *tenant.args()])
        if answer != "ok":
            raise TenantGone(gone_error(str(answer)))

    return save


def full_listing(stream: Stream) -> list[Record]:
    """Every live record of a stream (from no watermark), for reconciliation."""
    return [item for page in pages(partial(stream.fetch, None)) for item in page.items]


def reconcile(
    db: Database,
    company: str,
    kind: SyncKind,
    project: str | None,
    connector: Connector,
    fix: bool = False,
    skip: Collection[str] = (),
) -> dict[str, Drift]:
    """Compare the Procore side with the ERP's full data for ``kind``: drift per collection.

    With ``fix``, each drifted collection is then made equal to the ERP (missing and different
    records written, extra ones marked deleted, in one transaction per collection); the drift
    returned is what was found (and fixed). Streams named in ``skip`` are left out (a
    company-level stream that several project syncs share is compared once).
    """
    store = RecordStore(db, company)
    report: dict[str, Drift] = {}
    connector.prepare_full_listing()
    for s in streams(kind, connector, project):
        if s.name in skip:
            continue
        listing = full_listing(s)
        drift = store.drift(s.collection, s.project, listing)
        if fix and not drift.clean:
            store.write_page(s.collection, s.project, listing, deleted=drift.extra)
        report[s.name] = drift
    return report
