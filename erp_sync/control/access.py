"""Permission levels as stored, and the check every admin action makes inside its transaction.

Below the store and every module that changes a company, so the one rule (the acting user's
level, read in the same WATCHed transaction as the write, so a demotion racing it wins) is
spelt once.
"""

from __future__ import annotations

import redis

from config.keys import KeySpace
from config.models import PermissionLevel
from erp_sync.errors import PermissionDenied


def level_from(raw: object) -> PermissionLevel:
    """A stored level; anything missing or unknown reads as ``none``."""
    return (
        PermissionLevel(raw)
        if isinstance(raw, str) and raw in set(PermissionLevel)
        else PermissionLevel.NONE
    )


def require_level(
    company_id: str, user: str, level: PermissionLevel, needed: PermissionLevel
) -> None:
    """``PermissionDenied`` unless ``level`` is at least ``needed``."""
    if level.rank < needed.rank:
        raise PermissionDenied(
            f"user {user!r} has {level.value!r} on the ERP Integrations tool of {company_id!r}; "
            f"{needed.value!r} is required"
        )


def require_admin(pipe: redis.client.Pipeline, keys: KeySpace, company_id: str, actor: str) -> None:
    """Inside a transaction that WATCHes the company's users hash: ``actor`` must be admin."""
    require_level(
        company_id,
        actor,
        level_from(pipe.hget(keys.users(company_id), actor)),
        PermissionLevel.ADMIN,
    )
