"""A company's configuration as Redis holds it: what the database keeps a durable copy of.

Only Redis holds a company's record, projects, users, versioned settings, job-cost opt-outs,
ERP connection, alert rules and pause; a Redis lost without persistence would lose every
tenant's configuration. A ``Snapshot`` is all of it for one scope (a company id, or ``*`` for
the fleet-wide pause), read in one atomic step and tagged with the scope's revision
(``KeySpace.config_revs``), which only ever increases: the database keeps the newest one, and
``erp-sync restore-from-db`` writes it back. Values are the raw strings Redis stores, so a
connection's secrets stay sealed as stored (never decrypted on the way) and a restore puts back
exactly what was there.

``erp_sync.control.snapshot`` reads and writes the Redis side; ``erp_sync.db.config_copy``
stores snapshots by revision.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

FLEET = "*"


class Snapshot(BaseModel):
    """One scope's configuration at revision ``rev``; ``company`` None: none in Redis (it was
    removed, and ``removed`` is its removal record, or the scope is the fleet)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: str
    rev: int = Field(ge=0)
    company: str | None = None
    settings: str | None = None
    projects: dict[str, str] = Field(default_factory=dict)
    users: dict[str, str] = Field(default_factory=dict)
    optouts: list[str] = Field(default_factory=list)
    connection: dict[str, str] = Field(default_factory=dict)
    alerts: dict[str, str] = Field(default_factory=dict)
    pause: str | None = None
    pause_until: float | None = None
    removed: str | None = None

    @property
    def gone(self) -> bool:
        """A company scope with no company record: removed (a tombstone in the copy)."""
        return self.scope != FLEET and self.company is None
