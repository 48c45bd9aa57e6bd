"""The plain sync functions and the Procore-side store, on fakeredis, without Celery."""

from __future__ import annotations

import redis

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.connectors.sandbox import SandboxErp
from erp_sync.procore_store import ProcoreStore
from erp_sync.syncs import reconcile, run_sync
from tests.support.erp import small_company
from tests.support.snapshot import snapshot


def sync(client: redis.Redis, keys: KeySpace, kind: SyncKind,
         project: str | None = None) -> dict[str, int]:
    erp = SandboxErp(client, keys, "acme")
    return run_sync(client, keys, "acme", kind, project, erp).as_dict()


def procore_side(client: redis.Redis, keys: KeySpace) -> dict[str, object]:
    return snapshot(client, f"{keys.prefix}:procore")


def test_erp_changes_appear_on_the_procore_side(fake: redis.Redis, keys: KeySpace) -> None:
    data = small_company(fake, keys)
    assert sync(fake, keys, SyncKind.VENDORS) == {"created": 30, "updated": 0, "unchanged": 0}
    vendor = data.add_vendor("acme", "New Steel Co")
    second = data.get("acme", "vendors", "V00002")
    assert second is not None
    data.put("acme", "vendors", {**second, "active": False})
    assert sync(fake, keys, SyncKind.VENDORS) == {"created": 1, "updated": 1, "unchanged": 0}
    side = ProcoreStore(fake, keys, "acme").all("vendors")
    assert side[vendor["id"]] == vendor
    assert side["V00002"]["active"] is False


def test_a_sync_with_no_erp_change_writes_nothing(fake: redis.Redis, keys: KeySpace) -> None:
    small_company(fake, keys)
    for kind, project in ((SyncKind.VENDORS, None), (SyncKind.JOB_COSTS, "p1"),
                          (SyncKind.PAYMENTS, "p1")):
        assert sync(fake, keys, kind, project)["created"] > 0
        before = snapshot(fake, keys.prefix)
        assert sync(fake, keys, kind, project) == {"created": 0, "updated": 0, "unchanged": 0}
        after = snapshot(fake, keys.prefix)
        # Only the sandbox's own call log moves; the Procore side and watermarks do not.
        calls = keys.erp_calls("acme")
        assert {k: v for k, v in after.items() if k != calls} == \
            {k: v for k, v in before.items() if k != calls}


def test_a_sync_rerun_from_an_old_watermark_duplicates_nothing(fake: redis.Redis,
                                                               keys: KeySpace) -> None:
    small_company(fake, keys)
    sync(fake, keys, SyncKind.JOB_COSTS, "p1")
    fake.delete(keys.cursor("acme", "job_costs", "p1"))  # as if the first run died before the end
    counts = sync(fake, keys, SyncKind.JOB_COSTS, "p1")
    assert counts == {"created": 0, "updated": 0, "unchanged": 12 + 4 + 25}
    assert len(ProcoreStore(fake, keys, "acme").all("job_costs:p1")) == 25


def test_payments_land_on_their_commitments(fake: redis.Redis, keys: KeySpace) -> None:
    data = small_company(fake, keys)
    sync(fake, keys, SyncKind.PAYMENTS, "p1")
    payment = data.add_payment("acme", "p1", 12_345, "INV00002")
    assert sync(fake, keys, SyncKind.PAYMENTS, "p1")["created"] == 1
    issued = ProcoreStore(fake, keys, "acme").payments_by_commitment("p1")
    assert payment in issued[str(payment["commitment"])]


def test_reconciliation_reports_drift(fake: redis.Redis, keys: KeySpace) -> None:
    data = small_company(fake, keys)
    sync(fake, keys, SyncKind.VENDORS)
    erp = SandboxErp(fake, keys, "acme")
    assert reconcile(fake, keys, "acme", SyncKind.VENDORS, None, erp)["vendors"].clean
    added = data.add_vendor("acme", "Unsynced")
    fake.hset(keys.procore("acme", "vendors"), "V00001", '{"id":"V00001","name":"edited"}')
    fake.hset(keys.procore("acme", "vendors"), "GHOST", '{"id":"GHOST"}')
    drift = reconcile(fake, keys, "acme", SyncKind.VENDORS, None, erp)["vendors"]
    assert (drift.missing, drift.extra, drift.different) == ([added["id"]], ["GHOST"], ["V00001"])
