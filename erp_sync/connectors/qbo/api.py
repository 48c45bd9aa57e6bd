"""QuickBooks Online's Accounting API as this connector uses it: ``query`` and ``cdc``.

Every request takes a rate-limit token from the company's shared bucket first (500 a minute per
realm, ``erp_sync.throttle.ratelimit``) and holds one of the realm's concurrent places while it
runs (10, ``erp_sync.throttle.inflight``), so no number of workers can push a realm past
Intuit's limits. A 401 is answered by refreshing the access token once (single-flight across
the fleet, ``oauth.TokenManager``) and repeating the request; a second 401 means the
credentials are bad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from erp_sync.connectors.qbo.http import check, request, tid
from erp_sync.connectors.qbo.oauth import TokenManager
from erp_sync.control.connections import Connection
from erp_sync.errors import BadCredentials
from erp_sync.throttle.inflight import RequestSlots

MINOR_VERSION = "75"  # Intuit requires a minor version on every request
PAGE = 1000  # the API's largest page (MAXRESULTS) and CDC's largest response


class QboApi:
    """Requests to one realm on behalf of one company."""

    def __init__(
        self,
        connection: Connection,
        tokens: TokenManager,
        slots: RequestSlots,
        take: Callable[[], float] | None = None,
    ) -> None:
        self.connection, self.tokens, self.slots = connection, tokens, slots
        self.take = take  # the rate limit (set by the runner through ``throttle``)
        self.requests = 0  # made by this object (tests and the benchmark count them)

    def query(self, statement: str) -> dict[str, Any]:
        """``GET .../query``: the QueryResponse body (with the response's ``time``)."""
        return self._get("query", {"query": statement}, statement.split(" startposition")[0])

    def cdc(self, entities: list[str], changed_since: str) -> dict[str, Any]:
        """``GET .../cdc``: changes (deletions included) since ``changed_since``."""
        return self._get(
            "cdc",
            {"entities": ",".join(entities), "changedSince": changed_since},
            f"the changes to {','.join(entities)} since {changed_since}",
        )

    def _get(self, path: str, params: dict[str, str], what: str) -> dict[str, Any]:
        url = f"{self.connection.base_url.rstrip('/')}/v3/company/{self.connection.realm_id}/{path}"
        token = self.tokens.token()
        for attempt in (1, 2):
            if self.take is not None:
                self.take()
            with self.slots.hold():
                self.requests += 1
                response = request(
                    "GET",
                    url,
                    params={**params, "minorversion": MINOR_VERSION},
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                )
            if response.status_code != 401:
                return check(response, what)
            if attempt == 1:
                token = self.tokens.token(refused=token)
        raise BadCredentials(
            f"QuickBooks Online refused a fresh access token for "
            f"{self.connection.company} (intuit_tid {tid(response)}): "
            "reconnect it"
        )
