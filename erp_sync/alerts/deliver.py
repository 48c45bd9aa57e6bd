"""Posting one alert to its webhook, signing it, and keeping the delivery log.

The Celery task on the ``alerts`` queue (``tasks.alerts.deliver``) calls ``deliver_once`` once per
attempt and retries with backoff while attempts remain; the rule (URL and secret) is read from
Redis at each attempt, so no secret ever travels in a task's arguments, and a rule removed in
the meantime is dropped, not posted. The body is the JSON payload; with a secret, the header
``X-ERP-Sync-Signature: sha256=<hex HMAC-SHA256 of the body>`` lets the receiver verify it.
A password in the URL becomes Basic auth and never appears in the log or in errors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from config.alerts import AlertEvent, AlertRule, DeliveryEntry
from config.keys import KeySpace
from config.models import parse
from erp_sync.alerts.rules import open_secret

LOG_CAP = 500
SIGNATURE_HEADER = "X-ERP-Sync-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _request(rule: AlertRule, body: bytes, event: str, delivery: str) -> urllib.request.Request:
    parts = urlsplit(rule.url)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "erp-sync-alerts",
        "X-ERP-Sync-Event": event,
        "X-ERP-Sync-Delivery": delivery,
    }
    if rule.secret:
        headers[SIGNATURE_HEADER] = sign(open_secret(rule.secret), body)
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username is not None:
        auth = f"{parts.username}:{parts.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(auth).decode()
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def post(rule: AlertRule, message: dict[str, Any], timeout: float) -> tuple[int | None, str | None]:
    """One POST; (status code, error) where error is None for a 2xx answer."""
    body = json.dumps(message, sort_keys=True).encode()
    request = _request(rule, body, str(message["event"]), str(message["delivery"]))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status), None
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {str(reason)[:200]}"


def deliver_once(
    client: redis.Redis,
    keys: KeySpace,
    company: str,
    alert_id: str,
    message: dict[str, Any],
    attempt: int,
    final: bool,
    timeout: float,
) -> str:
    """One attempt, logged; returns ``delivered``, ``retrying``, ``failed`` or ``dropped``."""
    raw = client.hget(keys.alerts(company), alert_id)
    code: int | None = None
    error: str | None = "the alert was removed"
    if raw is None:
        outcome = "dropped"
    else:
        rule = parse(AlertRule, str(raw), f"alert {alert_id!r}")
        code, error = post(rule, message, timeout)
        outcome = "delivered" if error is None else "failed" if final else "retrying"
    log_delivery(
        client,
        keys,
        company,
        DeliveryEntry(
            at=datetime.now(UTC),
            alert=alert_id,
            delivery=str(message["delivery"]),
            event=AlertEvent(message["event"]),
            attempt=attempt,
            outcome=outcome,
            status_code=code,
            error=error,
        ),
    )
    return outcome


def log_delivery(client: redis.Redis, keys: KeySpace, company: str, entry: DeliveryEntry) -> None:
    with client.pipeline() as pipe:
        pipe.lpush(keys.alert_log(company), entry.model_dump_json())
        pipe.ltrim(keys.alert_log(company), 0, LOG_CAP - 1)
        pipe.execute()


def deliveries(
    client: redis.Redis, keys: KeySpace, company: str, limit: int = 50
) -> list[DeliveryEntry]:
    raws = client.lrange(keys.alert_log(company), 0, max(limit, 1) - 1)
    return [parse(DeliveryEntry, r, "delivery log entry") for r in raws]
