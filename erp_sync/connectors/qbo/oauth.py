"""OAuth 2.0 access tokens for QuickBooks Online, shared by every worker of the fleet.

An access token (about an hour) is cached per company in Redis, encrypted, and expires there
``MARGIN`` seconds before it does at Intuit. When it is missing (or a request was refused with
it), exactly one worker refreshes: it takes the company's refresh lock (``SET NX PX``), reads the
newest refresh token, calls the token endpoint, and stores the rotated refresh token
(compare-and-set on the connection's generation) and the new access token. Every other worker
that needed a token meanwhile waits for the lock holder's result instead of refreshing with the
same refresh token, which Intuit would answer by invalidating one of the two.

A refused refresh (``invalid_grant``: the token was revoked, expired or superseded) marks the
connection ``reconnect_required`` and fails with one clear error; later syncs fail on that mark
without asking Intuit again. The window this cannot close: a worker killed after Intuit rotated
the refresh token and before it was stored loses the new token (the company must reconnect);
storing comes immediately after the response to keep that window to microseconds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import redis

from config.keys import KeySpace
from erp_sync.connectors.qbo.http import fault_message, request, tid
from erp_sync.control.connections import Connection, ConnectionStore
from erp_sync.errors import (
    BadCredentials,
    ConcurrentUpdate,
    CorruptRecord,
    ErpServerError,
    NotReplicated,
)
from erp_sync.infra import lua

log = logging.getLogger(__name__)

MARGIN = 120.0  # seconds: a cached token is dropped this long before Intuit expires it
TOKEN_TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # per phase: a token request ends within ~35 s
LOCK_MS = 90_000  # the refresh lock's lease: well above one token request's timeouts
WAIT = 95.0  # how long a worker waits for another's refresh before trying itself


def reconnect_message(company: str) -> str:
    return (
        f"reconnect QuickBooks Online for {company}: its refresh token was refused "
        f"(erp-sync connect {company} ...)"
    )


class TokenManager:
    """Access tokens of one company (client passed in)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        store: ConnectionStore,
        company: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.keys, self.store, self.company = client, keys, store, company
        self.sleep = sleep
        self._release = lua.load(client, "compare_and_delete")

    def token(self, refused: str | None = None) -> str:
        """A valid access token; ``refused``: the one the API just refused (never returned)."""
        deadline = time.monotonic() + WAIT
        while True:
            cached = self._cached()
            if cached is not None and cached != refused:
                return cached
            self._fail_if_marked()
            holder = uuid.uuid4().hex
            if self.client.set(
                self.keys.token_refresh_lock(self.company), holder, nx=True, px=LOCK_MS
            ):
                try:
                    cached = self._cached()  # refreshed by another just before we locked
                    if cached is not None and cached != refused:
                        return cached
                    return self._refresh()
                finally:
                    self._release(keys=[self.keys.token_refresh_lock(self.company)], args=[holder])
            if time.monotonic() > deadline:
                raise ErpServerError(
                    f"no access token for {self.company}: another worker's "
                    f"refresh took longer than {WAIT:g}s"
                )
            self.sleep(0.05)

    def _cached(self) -> str | None:
        sealed = self.client.get(self.keys.access_token(self.company))
        if not sealed:
            return None
        try:
            return str(self.store.vault.open(str(sealed), "access token")["access_token"])
        except (CorruptRecord, KeyError):
            return None  # sealed with a key since removed: refresh

    def _fail_if_marked(self) -> None:
        connection = self.store.require(self.company)
        if connection.status == "reconnect_required":
            raise BadCredentials(reconnect_message(self.company))

    def _refresh(self) -> str:
        connection = self.store.require(self.company)
        secrets, generation = self.store.secrets(self.company)
        response = request(
            "POST",
            connection.token_url,
            data={"grant_type": "refresh_token", "refresh_token": secrets.refresh_token},
            auth=(connection.client_id, secrets.client_secret),
            headers={"Accept": "application/json"},
            timeout=TOKEN_TIMEOUT,
        )
        body = _json(response)
        if response.status_code in (400, 401) and body.get("error") in (
            "invalid_grant",
            "invalid_client",
        ):
            if self.store.secrets(self.company)[1] != generation:
                # Another worker stored a newer token meanwhile (its refresh outlived our
                # wait): ours was superseded, the connection is fine. Try again with its token.
                raise ErpServerError(
                    f"the refresh token of {self.company} was rotated by "
                    "another worker meanwhile; retrying"
                )
            self._refused(connection, str(body["error"]), generation)
        if response.status_code >= 500 or response.status_code == 429:
            raise ErpServerError(
                f"the QuickBooks Online token endpoint replied "
                f"{response.status_code} (intuit_tid {tid(response)})"
            )
        if response.status_code != 200 or "access_token" not in body:
            raise ErpServerError(
                f"the QuickBooks Online token endpoint replied "
                f"{response.status_code}: "
                f"{fault_message(body) or body.get('error', 'no token')}"
            )
        access, ttl = str(body["access_token"]), float(body.get("expires_in", 3600))
        new_refresh = str(body.get("refresh_token") or secrets.refresh_token)
        current = generation
        try:
            if new_refresh != secrets.refresh_token:
                current = self.store.rotate_refresh_token(
                    self.company, generation, new_refresh, datetime.now(UTC)
                )
        except ConcurrentUpdate:
            # Reconnected while we refreshed: our token belongs to the old connection.
            raise ErpServerError(
                f"the connection of {self.company} changed during a token refresh; retrying"
            ) from None
        except NotReplicated as exc:
            # Stored on the primary, which is what the next refresh reads; a failover right now
            # would lose it (the admin reconnects), and failing this sync would not save it.
            log.warning("%s", exc)
            current = self.store.secrets(self.company)[1]
        keep_ms = int(max(1.0, ttl - MARGIN) * 1000) if ttl > MARGIN else int(ttl * 500)
        # Cached only for the connection it was fetched for: a reconnect (or a removal) while
        # the refresh was in flight leaves no token of the old connection to serve the new one.
        self.store.cache_access_token(self.company, current, access, max(keep_ms, 1))
        return access

    def _refused(self, connection: Connection, error: str, generation: int) -> None:
        if error == "invalid_client":
            message = (
                f"reconnect QuickBooks Online for {self.company}: the client id or "
                "secret was refused (invalid_client)"
            )
        else:
            message = reconnect_message(self.company)
        self.store.mark(connection.company, "reconnect_required", message, generation=generation)
        self.client.delete(self.keys.access_token(self.company))
        raise BadCredentials(message)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
