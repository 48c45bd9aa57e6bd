"""Posting one alert to its webhook, signing it, and keeping the delivery log.

The Celery task on the ``alerts`` queue (``tasks.alerts.deliver``) calls ``deliver_once`` once per
attempt and retries with backoff while attempts remain; the rule (URL and secret) is read from
Redis at each attempt, so no secret ever travels in a task's arguments, and a rule removed in
the meantime is dropped, not posted. The body is the JSON payload; with a secret, the header
``X-ERP-Sync-Signature: sha256=<hex HMAC-SHA256 of the body>`` lets the receiver verify it.
A password in the URL becomes Basic auth and never appears in the log or in errors.

A delivery belongs to a tenant, not to a company id: the message the evaluator queues carries
the company's stamp (``TENANT_FIELD``: its record's ``created_at`` as stored, no secret;
``erp_sync.runs.tenant.stamp``). A delivery whose company was removed, or removed and added again
under the id, is dropped unposted (even to a rule of the same id) and its log entry is written
only while the stamp still matches, in the same atomic step (``list_push_if.lua``). The stamp
is not part of the POSTed body. A message without one (queued before stamps, or ``alert test``)
is guarded by the company's existence only.

Every attempt goes through the egress client (``erp_sync.infra.egress``): an internal target the
operator has not allowed is refused on the address it would connect to, the whole attempt ends
within the alert timeout, and redirects are never followed: a 3xx answer is a failed attempt
with its status code (the receiver must answer the URL it was given with a 2xx; following one
would carry the Basic credentials and the signature to wherever it points). Whatever the
receiver sends (a garbage status line, too many or too long headers, a connection closed
half-way) and whatever prevents the attempt (a secret that cannot be opened with
``ERP_SYNC_SECRET_KEY``, a rule that cannot be read) is a failed attempt with a one-line error
in the log, never an exception out of ``deliver_once``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import h11
import httpx
import redis

from config.alerts import AlertEvent, AlertRule, DeliveryEntry
from config.keys import KeySpace
from config.models import parse, tenant_stamp
from erp_sync.alerts.evaluate import TENANT_FIELD
from erp_sync.control.sealed import open_secret
from erp_sync.errors import ErpSyncError
from erp_sync.infra import egress, lua

LOG_CAP = 500
SIGNATURE_HEADER = "X-ERP-Sync-Signature"
log = logging.getLogger("erp_sync.alerts")


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def _request(rule: AlertRule, body: bytes, event: str, delivery: str) -> tuple[str, dict[str, str]]:
    """The URL (without its user and password) and the headers of the POST; ``ErpSyncError``
    when the rule's secret cannot be opened."""
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
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), headers


def post(
    rule: AlertRule,
    message: dict[str, Any],
    timeout: float,
    policy: egress.Policy | None = None,
) -> tuple[int | None, str | None]:
    """One POST, over within ``timeout`` seconds as a whole; (status code, error) where error is
    None for a 2xx answer. A 3xx is an error with its code: redirects are not followed."""
    posted = {k: v for k, v in message.items() if k != TENANT_FIELD}
    body = json.dumps(posted, sort_keys=True).encode()
    try:
        url, headers = _request(rule, body, str(message["event"]), str(message["delivery"]))
    except ErpSyncError as exc:
        return None, _one_line(f"not sent: the alert could not be signed: {exc}")
    try:
        with egress.client(timeout, policy=policy) as http:
            answer = http.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        return None, f"timed out: no complete answer within {timeout:g}s"
    except (httpx.HTTPError, h11.ProtocolError) as exc:
        return None, _one_line(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a receiver is untrusted: nothing it does may escape an attempt
        log.warning("alert delivery failed unexpectedly: %s", type(exc).__name__)
        return None, _one_line(f"{type(exc).__name__}: {exc}")
    code = answer.status_code
    if 200 <= code < 300:
        return code, None
    if 300 <= code < 400:
        return code, f"HTTP {code}: redirects are not followed"
    return code, f"HTTP {code}"


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
    """One attempt, logged; returns ``delivered``, ``retrying``, ``failed`` or ``dropped`` (the
    rule was removed, or the delivery's tenant is gone: then nothing is posted or logged)."""
    tenant = str(message.get(TENANT_FIELD) or "")
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.alerts(company), alert_id)
    pipe.get(keys.company(company))
    raw, record = pipe.execute()
    code: int | None = None
    error: str | None = "the alert was removed"
    if tenant and tenant_stamp(record) != tenant:
        log.info(
            "alert delivery of a removed tenant dropped company=%s alert=%s", company, alert_id
        )
        return "dropped"
    if raw is None:
        outcome = "dropped"
    else:
        try:
            rule = parse(AlertRule, str(raw), f"alert {alert_id!r}")
        except ErpSyncError as exc:
            error = _one_line(f"not sent: {exc}")
        else:
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
        tenant,
    )
    return outcome


def log_delivery(
    client: redis.Redis, keys: KeySpace, company: str, entry: DeliveryEntry, tenant: str = ""
) -> None:
    """Append to the company's delivery log, only while the company exists and (given a stamp)
    is still ``tenant``: a delivery that outlived its company's removal must neither recreate
    the log nor write into the log of a company added later under the id."""
    push = lua.load(client, "list_push_if")
    push(
        keys=[keys.company(company), keys.alert_log(company)],
        args=[entry.model_dump_json(), LOG_CAP, tenant],
    )


def deliveries(
    client: redis.Redis, keys: KeySpace, company: str, limit: int = 50
) -> list[DeliveryEntry]:
    raws = client.lrange(keys.alert_log(company), 0, max(limit, 1) - 1)
    return [parse(DeliveryEntry, r, "delivery log entry") for r in raws]
