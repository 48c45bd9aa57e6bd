"""The root of erp-sync's errors and the few that the configuration layer itself raises.

They live here, in the lowest layer, so that ``config`` needs nothing from ``erp_sync``;
``erp_sync.errors`` re-exports them and builds the rest of the one hierarchy on the same root.
Import errors from ``erp_sync.errors``; this module exists only to keep dependencies one way.
"""

from __future__ import annotations


class ErpSyncError(Exception):
    """Root of every error erp-sync raises deliberately."""


class ConfigError(ErpSyncError):
    """The process environment is invalid (a misspelt or malformed ERP_SYNC_* variable)."""


class StoreError(ErpSyncError):
    """Base for errors reading or writing the settings store."""


class CorruptRecord(StoreError):
    """A stored record failed validation on the way out of Redis."""
