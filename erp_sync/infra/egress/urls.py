"""Validating the URLs admins give: ERP endpoints (``connect``) and alert webhooks (``alert add``).

Both are refused, in one line and before anything is written, when they point at an internal
target the operator has not allowed (``policy``). An ERP URL is the base the connector appends
paths and its own query to, so it also must not carry credentials (httpx would send them as
Basic auth instead of the Bearer token, and they would be shown wherever the URL is) nor a query
or fragment (a trailing ``?`` or ``#`` would let the admin choose the exact path requested).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from erp_sync.errors import InvalidInput
from erp_sync.infra.egress import policy as _policy
from erp_sync.infra.egress.policy import Policy, Refused, Resolver

HINT = "an operator may allow it in ERP_SYNC_OUTBOUND_ALLOW"


def check_target(
    value: str, what: str, policy: Policy | None = None, resolver: Resolver | None = None
) -> None:
    """Refuse (``InvalidInput``, one line) an http(s) URL whose host is, or resolves to, an
    internal address not allowed by ``policy`` (the process settings' when None); names are
    resolved with ``policy.resolve`` unless ``resolver`` is given."""
    try:
        parts = urlsplit(value)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise InvalidInput(f"{what} is not a valid URL") from None
    default = 443 if parts.scheme == "https" else 80
    try:
        (policy or Policy.from_settings()).check_host(
            host, port or default, resolver or _policy.resolve
        )
    except Refused as exc:
        raise InvalidInput(f"{what} refused: {exc}; {HINT}") from None


def erp_url(value: str, option: str) -> str:
    """An ERP base or token URL as stored (no trailing ``/``), or ``InvalidInput`` naming
    ``option``: http(s) with a host, no user or password, no query or fragment, not internal."""
    shown = value[:100]
    try:
        url = httpx.URL(value)
        parts = urlsplit(value)
        _ = parts.port
    except (httpx.InvalidURL, TypeError, ValueError):
        raise InvalidInput(f"{option} must be an http(s) URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidInput(f"{option} must be an http(s) URL with a host, got {shown!r}")
    if url.userinfo or "@" in parts.netloc:
        raise InvalidInput(
            f"{option} must not contain a user name or password (give credentials in files)"
        )
    if "?" in value or "#" in value:
        raise InvalidInput(f"{option} must not have a query or fragment ('?' or '#'): {shown!r}")
    check_target(value, option)
    return str(url).rstrip("/")
