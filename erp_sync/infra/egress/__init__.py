"""Outbound HTTP under one policy: which targets webhooks and ERP URLs may reach (``policy``),
the URL validators that refuse the others when they are written (``urls``), and the httpx client
that refuses them again on the address it connects to and bounds each attempt (``transport``).
"""

from erp_sync.infra.egress.policy import Policy, Refused, internal_reason, parse_address
from erp_sync.infra.egress.transport import MAX_HEADERS, OutboundRefused, client
from erp_sync.infra.egress.urls import check_target, erp_url

__all__ = [
    "MAX_HEADERS",
    "OutboundRefused",
    "Policy",
    "Refused",
    "check_target",
    "client",
    "erp_url",
    "internal_reason",
    "parse_address",
]
