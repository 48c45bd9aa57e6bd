"""Intuit's OAuth 2.0 token endpoint, for the refresh grant only.

``POST /oauth2/v1/tokens/bearer`` with HTTP Basic ``client_id:client_secret`` and the form body
``grant_type=refresh_token&refresh_token=...`` answers ``{"token_type": "bearer", "access_token",
"expires_in": 3600, "refresh_token", "x_refresh_token_expires_in": 8726400}``. Assumptions,
each stricter than Intuit or filling a gap in its docs:

- Refresh tokens rotate on EVERY refresh and are single-use: the presented token dies the moment
  a new one is issued (Intuit may hand back the same value for a day and tolerate a re-use; a
  connector that survives this survives Intuit). Two workers refreshing with one token: the
  second gets ``invalid_grant``.
- One app (client id) may be connected to several companies; the presented refresh token picks
  the company. Unknown client or wrong secret: 401 ``invalid_client``; a dead, revoked or unknown
  refresh token: 400 ``invalid_grant``; a grant other than ``refresh_token``: 400
  ``unsupported_grant_type``; a body that is not ``application/x-www-form-urlencoded``, a missing
  ``refresh_token`` or an ``Accept`` without ``application/json``: 400 ``invalid_request``.
- Access tokens are opaque, belong to one company and live ``access_token_ttl`` seconds
  (default 3600) of real time: the admin clock shift moves data time, not token expiry.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

REFRESH_TOKEN_TTL = 8_726_400


class InvalidGrant(Exception):
    """The refresh token is dead, revoked or unknown."""


@dataclass
class Tokens:
    """One company's credentials as Intuit's OAuth server holds them."""

    client_id: str
    client_secret: str
    refresh_token: str | None
    access_token_ttl: float = 3600.0
    access: dict[str, float] = field(default_factory=dict)  # token -> monotonic expiry
    issued: set[str] = field(default_factory=set)  # every refresh token this company ever had
    refreshes: int = 0
    refresh_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.refresh_token is not None:
            self.issued.add(self.refresh_token)

    def owns(self, presented: str) -> bool:
        """Whether this company ever held the refresh token (live or dead)."""
        with self.lock:
            return presented in self.issued

    def refresh(self, presented: str) -> tuple[str, str, int]:
        """Rotate: a new access and refresh token; the presented one is dead from now on."""
        with self.lock:
            if self.refresh_token is None or not secrets.compare_digest(
                presented, self.refresh_token
            ):
                self.refresh_failures += 1
                raise InvalidGrant
            self.refresh_token = "RT1-" + secrets.token_urlsafe(24)
            self.issued.add(self.refresh_token)
            access = "eyJ" + secrets.token_urlsafe(48)
            self.access[access] = time.monotonic() + self.access_token_ttl
            self.refreshes += 1
            return access, self.refresh_token, max(1, round(self.access_token_ttl))

    def check(self, token: str) -> str | None:
        """None when the access token is good now, else why it is not (a 401's detail)."""
        with self.lock:
            expiry = self.access.get(token)
            if expiry is None:
                return "Token invalid"
            if time.monotonic() >= expiry:
                return "Token expired"
            return None

    def expire_all(self) -> None:
        with self.lock:
            for token in self.access:
                self.access[token] = 0.0

    def revoke(self) -> None:
        with self.lock:
            self.refresh_token = None

    def replace(self, refresh_token: str) -> None:
        """A reconnect: a fresh refresh token from a new authorization."""
        with self.lock:
            self.refresh_token = refresh_token
            self.issued.add(refresh_token)
