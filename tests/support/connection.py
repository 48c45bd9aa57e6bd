"""A QuickBooks Online connection stored as ``connect`` stores it, without calling any ERP."""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from config.keys import KeySpace
from config.models import AuditEntry, Erp
from erp_sync.control.connections import Connection, ConnectionStore, Secrets
from erp_sync.control.vault import Vault


def store_connection(
    client: redis.Redis,
    keys: KeySpace,
    vault: Vault,
    *,
    actor: str,
    secrets: Secrets,
    company: str = "qbo",
) -> ConnectionStore:
    """``company`` (whose admin ``actor`` is) connected to an unreachable loopback realm."""
    conns = ConnectionStore(client, keys, vault)
    now = datetime.now(UTC)
    conns.save(
        Connection(
            company=company,
            erp=Erp.QUICKBOOKS_ONLINE,
            realm_id="R1",
            client_id="app",
            base_url="http://127.0.0.1:1/v3",
            token_url="http://127.0.0.1:1/token",
            connected_by=actor,
            connected_at=now,
        ),
        secrets,
        AuditEntry(at=now, actor=actor, action="connection.connect", company=company),
    )
    return conns
