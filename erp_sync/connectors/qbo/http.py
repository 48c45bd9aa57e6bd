"""HTTP for the QuickBooks Online connector: one httpx client per process, typed errors.

One ``httpx.Client`` per worker process (created lazily, so after a prefork child forks, and
shared by a thread pool's threads: httpx clients are thread-safe) keeps connections alive across
requests and syncs. Timeouts are explicit: a connect that takes longer than ``CONNECT`` seconds
or a response slower than ``READ`` seconds is a transient ``ErpTimeout``.

``check`` maps a response onto the connector contract's errors: 429 -> ``RateLimited`` with its
Retry-After; 5xx -> ``ErpServerError``; a Fault body or malformed JSON -> ``ErpFault`` (the run
fails, with the message and ``intuit_tid``; nothing of that page is written). A 401 is left to
the caller, which refreshes the access token once before it gives up.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx

from erp_sync.errors import (
    ErpFault,
    ErpServerError,
    ErpTimeout,
    PermanentConnectorError,
    RateLimited,
)
from erp_sync.infra import egress

CONNECT = 5.0
READ = 30.0
USER_AGENT = "erp-sync/0.1 (+QuickBooks Online connector)"
_lock = threading.Lock()
ATTEMPT = 60.0  # one request as a whole, connect to last byte (egress.client)
_client: tuple[int, egress.Policy, httpx.Client] | None = None


def client() -> httpx.Client:
    """This process's client (a forked child makes its own: sockets do not cross a fork).

    The egress client (``erp_sync.infra.egress``): the operator's outbound policy on every
    address it connects to, so a base or token URL that is, or resolves to, an internal address
    not in ``ERP_SYNC_OUTBOUND_ALLOW`` is refused; no redirect followed; each request bounded
    by ``ATTEMPT`` seconds as a whole besides the per-phase timeouts."""
    global _client
    policy = egress.Policy.from_settings()
    with _lock:
        if _client is None or _client[:2] != (os.getpid(), policy):
            if _client is not None and _client[0] == os.getpid():
                _client[2].close()  # the operator's policy changed (tests): a new client
            _client = (
                os.getpid(),
                policy,
                egress.client(
                    ATTEMPT,
                    httpx.Timeout(READ, connect=CONNECT),
                    policy=policy,
                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                    headers={"User-Agent": USER_AGENT},
                ),
            )
        return _client[2]


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; network failures become the contract's transient errors."""
    try:
        return client().request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise ErpTimeout(
            f"QuickBooks Online did not answer in time ({type(exc).__name__})"
        ) from None
    except httpx.ConnectError as exc:
        if isinstance(exc.__cause__, egress.OutboundRefused):
            # The operator's outbound policy, not a network blip: retrying cannot help.
            raise PermanentConnectorError(f"QuickBooks Online {exc}") from None
        raise ErpServerError(
            f"QuickBooks Online could not be reached ({type(exc).__name__}: {exc})"
        ) from None
    except httpx.TransportError as exc:
        raise ErpServerError(
            f"QuickBooks Online could not be reached ({type(exc).__name__}: {exc})"
        ) from None


def tid(response: httpx.Response) -> str:
    return str(response.headers.get("intuit_tid", "-"))


def fault_message(body: Any) -> str | None:
    """The first error of a Fault body (either casing: Intuit uses both), or None."""
    if not isinstance(body, dict):
        return None
    fault = body.get("Fault") or body.get("fault")
    if not isinstance(fault, dict):
        return None
    errors = fault.get("Error") or fault.get("error") or [{}]
    first = errors[0] if isinstance(errors, list) and errors else {}
    if not isinstance(first, dict):
        return str(first)
    message = first.get("Message") or first.get("message") or "unknown error"
    detail = first.get("Detail") or first.get("detail")
    code = first.get("code") or first.get("Code")
    return f"{message}{f': {detail}' if detail else ''}{f' (code {code})' if code else ''}"


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def check(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON body of a successful response, or the typed error it means."""
    where = f"{what} (intuit_tid {tid(response)})"
    if response.status_code == 429:
        wait = retry_after(response)
        raise RateLimited(
            f"QuickBooks Online throttled {where}"
            f"{f', retry after {wait:g}s' if wait is not None else ''}",
            retry_after=wait,
        )
    if response.status_code >= 500:
        raise ErpServerError(f"QuickBooks Online replied {response.status_code} to {where}")
    try:
        body = response.json()
    except ValueError:
        raise ErpFault(f"QuickBooks Online sent malformed JSON for {where}") from None
    message = fault_message(body)
    if message is not None or response.status_code >= 400:
        raise ErpFault(
            f"QuickBooks Online refused {where}: {message or f'HTTP {response.status_code}'}"
        )
    if not isinstance(body, dict):
        raise ErpFault(f"QuickBooks Online sent an unexpected body for {where}")
    return body
