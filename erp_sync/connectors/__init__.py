"""ERP connectors: one module per ERP family behind the contract in ``base``.

``connector_for`` picks a company's connector: its ERP family's factory from ``FAMILIES`` (today
QuickBooks Online, for a connected company), otherwise the sandbox ERP (DESIGN.md: the default
until a real connector is configured). A family plugs in by adding its factory under its ``Erp``
key.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from config.keys import KeySpace
from config.models import Company, Erp
from erp_sync.connectors import qbo
from erp_sync.connectors.base import Connector, Page, pages
from erp_sync.connectors.sandbox import SandboxErp

Factory = Callable[[redis.Redis, KeySpace, Company], Connector]

FAMILIES: dict[Erp, Factory] = {Erp.QUICKBOOKS_ONLINE: qbo.connector}


def connector_for(client: redis.Redis, keys: KeySpace, company: Company) -> Connector:
    """The company's connector: its ERP family's, or the sandbox ERP when none is configured."""
    factory = FAMILIES.get(company.erp)
    if factory is not None:
        return factory(client, keys, company)
    return SandboxErp(client, keys, company.id)


__all__ = ["FAMILIES", "Connector", "Page", "SandboxErp", "connector_for", "pages"]
