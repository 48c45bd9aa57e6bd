"""Stored alert state as pydantic models: a company's webhook rules, incident state, deliveries.

Validated on the way in (``alert add``) and out (the evaluator, the delivery task), like every
other stored record. A rule's secret is kept in Redis for signing and never leaves it: every
place that shows a rule uses ``AlertRule.public()``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from config.urls import mask_webhook_url
from config.validation import shorten


class AlertEvent(StrEnum):
    FAILED = "failed"  # first failure after a success (or the N-th in a row)
    STALE = "stale"  # an enabled, unpaused sync with no success for two of its periods
    RECOVERED = "recovered"  # the first success after a failed or stale alert
    TEST = "test"  # `alert test`: never sent by the evaluator


def _webhook_url(value: str) -> str:
    """http(s), a host, no spaces or control characters, at most 2,000 characters."""
    if len(value) > 2000 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(
            f"{shorten(value)} is not a valid webhook URL (no spaces or control "
            "characters; at most 2000 characters)"
        )
    try:
        parts = urlsplit(value)
        _ = parts.port  # a non-numeric or out-of-range port raises here
    except ValueError:
        raise ValueError(f"{shorten(value)} is not a valid webhook URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{shorten(mask_webhook_url(value))} is not a valid webhook URL (need "
            "http:// or https:// and a host)"
        )
    return value


WebhookUrl = Annotated[str, AfterValidator(_webhook_url)]


class AlertRule(BaseModel):
    """One webhook of a company: where to post, which events, after how many failures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9]{1,32}$")
    company: str
    url: WebhookUrl
    events: list[AlertEvent] = Field(min_length=1)
    failures: int = Field(1, ge=1, le=1000)  # consecutive failures that make an incident
    # Stored sealed ("fernet:..." under ERP_SYNC_SECRET_KEY, erp_sync/alerts/rules.py); a
    # rule written before sealing existed holds it as given and still signs.
    secret: str | None = Field(None, min_length=1, max_length=4000)
    created_by: str
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """What ``alert list`` and audit entries show: the URL masked
        (``config.urls.mask_webhook_url``), the secret only as set."""
        out = self.model_dump(mode="json", exclude={"secret"})
        out["url"] = mask_webhook_url(self.url)
        out["signed"] = self.secret is not None
        return out


class Incident(BaseModel):
    """Per (kind, project) of a company: failures in a row and what was alerted."""

    model_config = ConfigDict(extra="forbid")

    failures: int = 0
    stale: bool = False


class DeliveryEntry(BaseModel):
    """One attempt to deliver one alert (the delivery log, newest first)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    alert: str
    delivery: str
    event: AlertEvent
    attempt: int
    outcome: str  # delivered | retrying | failed | dropped
    status_code: int | None = None
    error: str | None = None
