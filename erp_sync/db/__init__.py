"""The database the syncs write into: engine and schema check, Procore-side records, run history.

SQLAlchemy Core on SQLite (embedded, the default) or PostgreSQL (production); the schema is
migrated by Alembic (``erp-sync db upgrade``). See ``schema`` for what is stored and why.
"""

from erp_sync.db.engine import Database, database, mask
from erp_sync.db.records import Counts, Drift, RecordStore, canonical
from erp_sync.db.runs import RunLog

__all__ = ["Counts", "Database", "Drift", "RecordStore", "RunLog", "canonical", "database", "mask"]
