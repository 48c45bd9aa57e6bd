"""Every error erp-sync raises on purpose, under one root.

Callers catch a subsystem's base class; the CLI turns any ``ErpSyncError`` into one line on stderr
and a non-zero exit. Connector errors split into transient and permanent so that retry policy is a
type check, not string matching.
"""

from __future__ import annotations

# The root and the errors the configuration layer raises live below erp_sync (config/errors.py);
# they are part of this hierarchy and importable from here like every other error.
from config.errors import ConfigError, CorruptRecord, ErpSyncError, StoreError

__all__ = [
    "AlreadyExists",
    "BadCredentials",
    "ConcurrentUpdate",
    "ConfigError",
    "ConnectorError",
    "CorruptRecord",
    "DatabaseError",
    "DatabaseUnavailable",
    "ErpFault",
    "ErpServerError",
    "ErpSyncError",
    "ErpTimeout",
    "InvalidInput",
    "MustWait",
    "NotFound",
    "NotReplicated",
    "PermanentConnectorError",
    "PermissionDenied",
    "RateLimited",
    "RedisUnavailable",
    "SchemaBehind",
    "StoreError",
    "SyncTimedOut",
    "TenantGone",
    "TransientConnectorError",
    "UnknownErpObject",
    "UnsupportedSetting",
    "WorkerError",
]

# --- settings store -------------------------------------------------------------------------


class RedisUnavailable(StoreError):
    """Redis cannot be reached or refused the connection (auth, TLS, network)."""


class NotFound(StoreError):
    """A company, project or user named on input does not exist."""


class AlreadyExists(StoreError):
    """Creating something that already exists (a company or project id is taken)."""


class InvalidInput(StoreError):
    """A value on input is malformed or outside the allowed set."""


class UnsupportedSetting(InvalidInput):
    """A sync was asked for that the company's ERP does not support."""


class PermissionDenied(StoreError):
    """The acting user lacks the permission level the action requires."""


class ConcurrentUpdate(StoreError):
    """Optimistic concurrency gave up after too many conflicting writers."""


class NotReplicated(StoreError):
    """A change the Redis primary committed that too few replicas acknowledged in time (``WAIT``):
    it is stored, but a failover before a replica has it would lose it. ``result`` is what the
    committed action returned (the change is not undone)."""

    def __init__(self, acked: int, wanted: int, timeout_ms: int, result: object = None) -> None:
        who = "no replica" if acked == 0 else f"only {acked} of {wanted} replicas"
        super().__init__(
            f"the change is stored on the primary but {who} acknowledged it within "
            f"{timeout_ms} ms; it may be lost if the primary fails now"
        )
        self.acked, self.wanted, self.timeout_ms, self.result = acked, wanted, timeout_ms, result


# --- connectors -----------------------------------------------------------------------------


class ConnectorError(ErpSyncError):
    """Base for errors talking to an ERP."""


class TransientConnectorError(ConnectorError):
    """The call may succeed if retried later (timeout, 5xx, rate limited)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientConnectorError):
    """The ERP asked us to slow down; ``retry_after`` says for how long (seconds)."""


class ErpTimeout(TransientConnectorError):
    """The ERP did not answer in time."""


class ErpServerError(TransientConnectorError):
    """The ERP answered with a server-side failure (a 5xx)."""


class PermanentConnectorError(ConnectorError):
    """Retrying cannot help (bad credentials, unknown job); the run fails at once."""


class BadCredentials(PermanentConnectorError):
    """The ERP rejected the integration's credentials."""


class ErpFault(PermanentConnectorError):
    """The ERP answered with an error body (or with one it could not have meant: malformed
    JSON); the run fails with the ERP's message and request id, and the page is not written."""


class UnknownErpObject(PermanentConnectorError):
    """The ERP does not know the job (or other object) the sync asked for."""


# --- workers --------------------------------------------------------------------------------


class WorkerError(ErpSyncError):
    """Base for errors of a sync run itself (not of the ERP it talks to)."""


class MustWait(WorkerError):
    """The sync must wait for a rate-limit token longer than it may hold a worker slot: it is
    deferred, keeping its task id (the runner defers the ERP's Retry-After and the company's
    concurrency cap the same way, without this error)."""

    def __init__(self, seconds: float, why: str, ticket: float | None = None) -> None:
        super().__init__(f"waiting {seconds:.1f}s for {why}")
        # ``ticket``: its place in the rate limit's queue of waiters, to present on return.
        self.seconds, self.why, self.ticket = seconds, why, ticket


class SyncTimedOut(WorkerError):
    """A sync ran past its soft time limit and stopped between pages (it reruns next slot)."""


class TenantGone(WorkerError):
    """The run's company (or project) was removed, or removed and added again, while it ran:
    nothing more is written for it (``erp_sync/runs/tenant.py``)."""


# --- the database ---------------------------------------------------------------------------


class DatabaseError(ErpSyncError):
    """Base for errors of the database the syncs write into."""


class SchemaBehind(DatabaseError):
    """The database's schema is not the one this code needs (run ``erp-sync db upgrade``)."""


class DatabaseUnavailable(DatabaseError):
    """The database is down, unreachable or locked: a sync retries it like a transient ERP
    error (with backoff); nothing of the page it was writing was committed."""
