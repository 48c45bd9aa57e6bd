"""The plain sync functions and the Procore-side database, on fakeredis + SQLite, no Celery."""

from __future__ import annotations

import redis
from sqlalchemy import func, select

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.connectors.sandbox import SandboxErp
from erp_sync.db import Database, RecordStore
from erp_sync.db.schema import COLLECTIONS
from erp_sync.runs.syncs import reconcile, run_sync
from tests.support.db import deleted_ids, payments_by_commitment
from tests.support.erp import small_company
from tests.support.snapshot import snapshot

NOTHING = {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0}


def sync(
    client: redis.Redis, keys: KeySpace, db: Database, kind: SyncKind, project: str | None = None
) -> dict[str, int]:
    erp = SandboxErp(client, keys, "acme")
    return run_sync(client, keys, db, "acme", kind, project, erp).as_dict()


def versions(db: Database) -> dict[str, int]:
    """Sum of row versions per table: moves whenever any row is inserted or updated."""
    with db.engine.connect() as conn:
        return {
            name: int(
                conn.execute(select(func.coalesce(func.sum(c.table.c.version), 0))).scalar_one()
            )
            for name, c in COLLECTIONS.items()
        }


def test_erp_changes_appear_on_the_procore_side(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    data = small_company(fake, keys)
    assert sync(fake, keys, db, SyncKind.VENDORS) == {**NOTHING, "created": 30}
    vendor = data.add_vendor("acme", "New Steel Co")
    second = data.get("acme", "vendors", "V00002")
    assert second is not None
    data.put("acme", "vendors", {**second, "active": False})
    assert sync(fake, keys, db, SyncKind.VENDORS) == {**NOTHING, "created": 1, "updated": 1}
    side = RecordStore(db, "acme").all("vendors")
    assert side[vendor["id"]] == vendor
    assert side["V00002"]["active"] is False
    with db.engine.connect() as conn:
        t = COLLECTIONS["vendors"].table
        row = conn.execute(select(t).where(t.c.erp_id == "V00002")).one()
    assert (row.active, row.version, row.deleted_in_erp) == (False, 2, False)
    assert row.last_changed > row.first_seen


def test_a_sync_with_no_erp_change_writes_nothing(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    small_company(fake, keys)
    for kind, project in (
        (SyncKind.VENDORS, None),
        (SyncKind.JOB_COSTS, "p1"),
        (SyncKind.PAYMENTS, "p1"),
    ):
        assert sync(fake, keys, db, kind, project)["created"] > 0
        before, rows = snapshot(fake, keys.prefix), versions(db)
        again = sync(fake, keys, db, kind, project)
        assert again["created"] == again["updated"] == again["deleted"] == 0
        assert versions(db) == rows  # not a row written
        after = snapshot(fake, keys.prefix)
        # Only the sandbox's own call log moves; the watermarks do not.
        calls = keys.erp_calls("acme")
        assert {k: v for k, v in after.items() if k != calls} == {
            k: v for k, v in before.items() if k != calls
        }


def test_an_erp_deletion_marks_the_row_and_keeps_it(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    data = small_company(fake, keys)
    sync(fake, keys, db, SyncKind.VENDORS)
    data.delete("acme", "vendors", "V00003")
    assert sync(fake, keys, db, SyncKind.VENDORS) == {**NOTHING, "deleted": 1}
    store = RecordStore(db, "acme")
    assert "V00003" not in store.all("vendors")
    assert deleted_ids(store, "vendors") == {"V00003"}
    assert "V00003" in store.all("vendors", include_deleted=True)
    assert sync(fake, keys, db, SyncKind.VENDORS) == NOTHING
    erp = SandboxErp(fake, keys, "acme")
    assert reconcile(db, "acme", SyncKind.VENDORS, None, erp)["vendors"].clean
    # Recreated in the ERP: the row comes back to life, as an update.
    data.put(
        "acme",
        "vendors",
        {"id": "V00003", "name": "Back", "active": True, "tax_id": "", "city": ""},
    )
    assert sync(fake, keys, db, SyncKind.VENDORS) == {**NOTHING, "updated": 1}
    assert deleted_ids(store, "vendors") == set()


def test_a_sync_rerun_from_an_old_watermark_duplicates_nothing(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    small_company(fake, keys)
    sync(fake, keys, db, SyncKind.JOB_COSTS, "p1")
    fake.delete(keys.cursor("acme", "job_costs", "p1"))  # as if the first run died before the end
    counts = sync(fake, keys, db, SyncKind.JOB_COSTS, "p1")
    assert counts == {**NOTHING, "unchanged": 12 + 4 + 25}
    assert len(RecordStore(db, "acme").all("job_costs", "p1")) == 25


def test_payments_land_on_their_commitments(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    data = small_company(fake, keys)
    sync(fake, keys, db, SyncKind.PAYMENTS, "p1")
    payment = data.add_payment("acme", "p1", 12_345, "INV00002")
    assert sync(fake, keys, db, SyncKind.PAYMENTS, "p1")["created"] == 1
    issued = payments_by_commitment(RecordStore(db, "acme"), "p1")
    assert payment in issued[str(payment["commitment"])]


def test_reconciliation_reports_drift_and_fix_repairs_it(
    fake: redis.Redis, keys: KeySpace, db: Database
) -> None:
    data = small_company(fake, keys)
    sync(fake, keys, db, SyncKind.VENDORS)
    erp = SandboxErp(fake, keys, "acme")
    assert reconcile(db, "acme", SyncKind.VENDORS, None, erp)["vendors"].clean
    added = data.add_vendor("acme", "Unsynced")
    store = RecordStore(db, "acme")
    store.write_page("vendors", None, [{"id": "V00001", "name": "edited"}, {"id": "GHOST"}])
    drift = reconcile(db, "acme", SyncKind.VENDORS, None, erp)["vendors"]
    assert (drift.missing, drift.extra, drift.different) == ([added["id"]], ["GHOST"], ["V00001"])
    fixed = reconcile(db, "acme", SyncKind.VENDORS, None, erp, fix=True)["vendors"]
    assert fixed == drift  # what was found, and fixed
    assert reconcile(db, "acme", SyncKind.VENDORS, None, erp)["vendors"].clean
    assert deleted_ids(store, "vendors") == {"GHOST"}
