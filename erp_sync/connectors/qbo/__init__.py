"""QuickBooks Online (``quickbooks_online``): the first real connector, and the one to copy.

A company on QuickBooks Online that an admin connected (``erp-sync connect``) is served by
``QboConnector`` over HTTP; one that is not connected stays on the sandbox ERP. What a second
connector copies: ``http`` (one client per process, typed errors), ``oauth`` (single-flight
token refresh), ``api`` (a token per request, a fleet-wide cap on requests in flight), the
mirror for ERPs that cannot list per project (``erp_sync.db.mirror``), and ``mapping`` kept
apart from transport so the field-by-field mapping reads on its own.
"""

from __future__ import annotations

import redis

from config.keys import KeySpace
from config.models import Company
from erp_sync.connectors.base import Connector
from erp_sync.connectors.qbo.api import QboApi
from erp_sync.connectors.qbo.connector import QboConnector
from erp_sync.connectors.qbo.oauth import TokenManager, reconnect_message
from erp_sync.connectors.sandbox import SandboxErp
from erp_sync.control.connections import ConnectionStore
from erp_sync.db import database
from erp_sync.errors import BadCredentials
from erp_sync.throttle.inflight import RequestSlots

DEFAULT_REQUESTS = 10  # in flight per realm (Intuit's limit), until the runner says otherwise
PRODUCTION_API = "https://quickbooks.api.intuit.com"
TOKEN_URL = "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"


def connector(client: redis.Redis, keys: KeySpace, company: Company) -> Connector:
    """The company's QuickBooks Online when it is connected, its sandbox ERP otherwise."""
    store = ConnectionStore(client, keys)
    connection = store.get(company.id)
    if connection is None:
        return SandboxErp(client, keys, company.id)
    if connection.status == "reconnect_required":
        raise BadCredentials(connection.error or reconnect_message(company.id))
    api = QboApi(
        connection,
        TokenManager(client, keys, store, company.id),
        RequestSlots(client, keys, company.id, DEFAULT_REQUESTS),
    )
    return QboConnector(client, keys, database(), company.id, api)


__all__ = ["PRODUCTION_API", "TOKEN_URL", "QboConnector", "connector"]
