"""A connector that does something between two pages of a sync: a test's way to land a
change (a company removed, a database turned read-only) while a real run is under way."""

from __future__ import annotations

from collections.abc import Callable

from erp_sync.connectors import Connector
from erp_sync.connectors.base import Page


class Midway(Connector):
    """The sandbox connector, calling ``hook`` once before its ``after``-th listing call."""

    def __init__(self, inner: Connector, hook: Callable[[], object], after: int = 2) -> None:
        self.inner, self.hook, self.after, self.calls = inner, hook, after, 0
        self.family = inner.family

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.after:
            self.hook()

    def vendors(self, since: str | None, cursor: str | None) -> Page:
        self._tick()
        return self.inner.vendors(since, cursor)

    def jobs(self, since: str | None, cursor: str | None) -> Page:
        self._tick()
        return self.inner.jobs(since, cursor)

    def standard_cost_codes(self, since: str | None, cursor: str | None) -> Page:
        self._tick()
        return self.inner.standard_cost_codes(since, cursor)

    def project_cost_codes(self, job: str, since: str | None, cursor: str | None) -> Page:
        self._tick()
        return self.inner.project_cost_codes(job, since, cursor)

    def job_costs(self, job: str, since: str | None, cursor: str | None) -> Page:
        self._tick()
        return self.inner.job_costs(job, since, cursor)

    def bill_payments(self, job: str, since: str | None, cursor: str | None) -> Page:
        self._tick()
        return self.inner.bill_payments(job, since, cursor)
