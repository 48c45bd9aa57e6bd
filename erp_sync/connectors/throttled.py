"""A connector under its company's shared rate limit (``erp_sync.throttle.ratelimit``).

The wrapper lives with the connectors, not the bucket, so throttling stays below them: the
bucket knows nothing of connectors, a connector knows the bucket.
"""

from __future__ import annotations

from erp_sync.connectors.base import Connector, Page, SelfThrottling
from erp_sync.throttle.ratelimit import TokenBucket


def throttled(inner: Connector, bucket: TokenBucket) -> Connector:
    """``inner`` under the company's bucket: a connector that makes its own requests takes a
    token per HTTP request itself (``SelfThrottling``); any other takes one per call."""
    if isinstance(inner, SelfThrottling):
        inner.throttle(bucket.take, bucket.limit.requests)
        return inner
    return Throttled(inner, bucket)


class Throttled(Connector):
    """A connector whose every call first takes a token from the company's shared bucket."""

    def __init__(self, inner: Connector, bucket: TokenBucket) -> None:
        self.inner, self.bucket = inner, bucket
        self.family = inner.family

    def vendors(self, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.vendors(since, cursor)

    def jobs(self, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.jobs(since, cursor)

    def standard_cost_codes(self, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.standard_cost_codes(since, cursor)

    def project_cost_codes(self, job: str, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.project_cost_codes(job, since, cursor)

    def job_costs(self, job: str, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.job_costs(job, since, cursor)

    def bill_payments(self, job: str, since: str | None, cursor: str | None) -> Page:
        self.bucket.take()
        return self.inner.bill_payments(job, since, cursor)

    def prepare_full_listing(self) -> None:
        self.inner.prepare_full_listing()
