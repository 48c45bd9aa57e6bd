"""The connector contract every ERP family implements (the sandbox ERP is just another one).

Reading is **paginated and incremental**. Every listing takes a ``since`` watermark (``None`` for
everything) and a page ``cursor`` (``None`` for the first page) and returns a ``Page``. A caller
reads pages until ``next_cursor`` is ``None`` and only then stores ``Page.watermark`` for the next
sync: a sync that dies half-way re-reads from the old watermark, so watermarks never skip data.
Watermarks and cursors are opaque strings; only the connector that issued them interprets them.

Records are plain JSON-able dicts with a string ``"id"`` (the ERP id the Procore side upserts by)
and no volatile fields (no fetch timestamps), so an unchanged ERP record compares equal to what
the Procore side stored last time. Records deleted in the ERP since ``since`` come back as ids in
``Page.deleted``: the Procore side marks them deleted (it never drops a row).

Errors are typed so retry policy is a type check: ``TransientConnectorError`` (``ErpTimeout``,
``ErpServerError``, ``RateLimited`` with ``retry_after`` seconds) may succeed later;
``PermanentConnectorError`` (``BadCredentials``, ``UnknownErpObject``) cannot and fails the run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Record = dict[str, Any]


@dataclass(frozen=True)
class Page:
    """One page of changed records."""

    items: list[Record]
    next_cursor: str | None
    # The watermark to store once every page of this listing has been consumed.
    watermark: str | None = None
    # ERP ids deleted since the watermark (a full listing, ``since=None``, may still name some).
    deleted: list[str] = field(default_factory=list)


Fetch = Callable[[str | None], Page]


class Connector(ABC):
    """Read access to one company's ERP. Implementations must be safe to use from one thread."""

    #: The ERP family key(s) this connector serves (``config.models.Erp`` values).
    family: str = "abstract"

    @abstractmethod
    def vendors(self, since: str | None, cursor: str | None) -> Page:
        """Vendors (the ERP's companies list) created or changed after ``since``."""

    @abstractmethod
    def jobs(self, since: str | None, cursor: str | None) -> Page:
        """Jobs created or changed after ``since``; a Procore project links to one job by id."""

    @abstractmethod
    def standard_cost_codes(self, since: str | None, cursor: str | None) -> Page:
        """Company-wide (standard) cost codes changed after ``since``."""

    @abstractmethod
    def project_cost_codes(self, job: str, since: str | None, cursor: str | None) -> Page:
        """Cost codes specific to ``job``; raises ``UnknownErpObject`` for an unknown job."""

    @abstractmethod
    def job_costs(self, job: str, since: str | None, cursor: str | None) -> Page:
        """Job cost transactions of ``job`` changed after ``since`` (``UnknownErpObject``)."""

    def prepare_full_listing(self) -> None:
        """Called before a reconciliation reads full listings (``since=None``); a connector
        that serves listings from a mirror re-reads it in full here. Nothing by default."""
        return None

    @abstractmethod
    def bill_payments(self, job: str, since: str | None, cursor: str | None) -> Page:
        """Bill payments made in the ERP against ``job``'s synced invoices, each naming its
        ``invoice`` and ``commitment`` (shown in Procore as Payments Issued on the commitment)."""


@runtime_checkable
class SelfThrottling(Protocol):
    """A connector whose calls make a varying number of HTTP requests (or none, when served
    from what it already mirrored) takes a rate-limit token per request itself."""

    def throttle(self, take: Callable[[], float], requests: int | None) -> None:
        """Use ``take`` (blocks until a request is allowed, or raises ``MustWait``) and keep
        at most ``requests`` of the company's requests in flight fleet-wide (None: no cap)."""


def pages(fetch: Fetch, cursor: str | None = None) -> Iterator[Page]:
    """Every page of one listing from ``cursor`` on (``fetch(cursor)`` returns one page)."""
    while True:
        page = fetch(cursor)
        yield page
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
