"""The QuickBooks Online connector in-process, against the fake server over real HTTP.

One fake server process serves the module; every test makes its own realm (company), so tests
never see each other's data, tokens, switches or counters. The syncs run as a worker runs them
(``tests.support.qbo.sync``: the company's connector under its shared rate limit, pages written
to the test's database), or through the ``Runner`` where what matters is how a run ends
(deferred, retried, failed).
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import update

from config.env import get_settings
from config.keys import KeySpace
from config.models import Erp, RunRecord, SyncKind
from erp_sync.connectors import connector_for
from erp_sync.connectors.qbo import QboConnector
from erp_sync.connectors.qbo import api as qbo_api
from erp_sync.connectors.qbo import http as qbo_http
from erp_sync.connectors.qbo.oauth import TokenManager
from erp_sync.connectors.throttled import throttled
from erp_sync.control.connections import ConnectionStore
from erp_sync.control.store import SettingsStore
from erp_sync.db import Database, RecordStore
from erp_sync.db.schema import erp_mirror
from erp_sync.errors import BadCredentials, MustWait
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.runner import Outcome, Runner
from erp_sync.runs.syncs import reconcile
from erp_sync.throttle.ratelimit import (
    CompanyLimit,
    TokenBucket,
    limit_for,
    set_company_limit,
    set_limit,
)
from tests.support.db import deleted_ids, written
from tests.support.fake_qbo.client import FakeQbo, Seed
from tests.support.qbo import QboRealm, connect, leaked, new_realm, qbo_company, sync, tokens
from tests.support.redisproc import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qbo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeQbo]:
    server = FakeQbo.start(tmp_path_factory.mktemp("fake_qbo"))
    yield server
    assert server.stop() == 0, server.log.read_text()


@pytest.fixture
def secret_key(env: pytest.MonkeyPatch) -> str:
    key = Fernet.generate_key().decode()
    env.setenv("ERP_SYNC_SECRET_KEY", key)
    get_settings.cache_clear()
    return key


@pytest.fixture
def keyed(real: redis.Redis, secret_key: str) -> redis.Redis:
    """The real Redis with a secret key set (the order matters: ``real`` resets the env)."""
    return real


def connected(
    client: redis.Redis,
    keys: KeySpace,
    qbo: FakeQbo,
    seed: Seed,
    projects: tuple[str, ...] = (),
    ttl: float | None = None,
) -> QboRealm:
    """A realm seeded with ``seed`` and company ``acme`` connected to it."""
    realm = new_realm(qbo, seed, access_token_ttl=ttl)
    qbo_company(client, keys, projects=projects)
    connect(client, keys, realm)
    return realm


def delivery(
    task_id: str,
    kind: SyncKind,
    project: str | None = None,
    *,
    retries: int = 0,
    deferrals: int = 0,
) -> Delivery:
    return Delivery(
        task_id=task_id,
        company="acme",
        kind=kind,
        project=project,
        slot="2026-01-01T00:00:00+00:00",
        trigger="manual",
        retries=retries,
        deferrals=deferrals,
    )


def run_to_end(runner: Runner, d: Delivery, max_steps: int = 10) -> tuple[RunRecord, list[Outcome]]:
    """Execute ``d`` as Celery would: again after each deferral or retry (without waiting: the
    fake's injected failures are one-shot), until the run has a final record."""
    outcomes: list[Outcome] = []
    for _ in range(max_steps):
        outcome = runner.execute(d)
        outcomes.append(outcome)
        if outcome.defer_in is not None:
            d = delivery(d.task_id, d.kind, d.project, retries=d.retries, deferrals=d.deferrals + 1)
        elif outcome.retry_in is not None:
            d = delivery(d.task_id, d.kind, d.project, retries=d.retries + 1, deferrals=d.deferrals)
        else:
            assert outcome.record is not None
            return outcome.record, outcomes
    raise AssertionError(f"{d.task_id} did not finish in {max_steps} executions: {outcomes}")


# --- vendors: pages, incremental reads, deletions ------------------------------------------------


def test_a_first_sync_reads_2500_vendors_in_pages_and_the_next_reads_only_the_changes(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=2500, inactive_every=50))
    first = sync(keyed, keys, db, SyncKind.VENDORS)
    assert (first.created, first.updated, first.deleted) == (2500, 0, 0)
    stats = realm.stats()
    assert stats["queries"] >= 3 and stats["cdc"] == 0  # 1000 a page: three pages at least
    assert stats["refreshes"] == 1 and stats["throttled"] == 0
    vendors = RecordStore(db, "acme").all("vendors")
    assert len(vendors) == 2500
    assert sum(1 for v in vendors.values() if not v["active"]) == 50  # inactive ones are read

    qbo.reset_stats(realm.realm_id)
    qbo.change(realm.realm_id, "Vendor", ["7", "1200", "2499"], {"DisplayName": "Renamed Co"})
    second = sync(keyed, keys, db, SyncKind.VENDORS)
    assert (second.created, second.updated, second.deleted) == (0, 3, 0)
    stats = realm.stats()
    assert stats["cdc"] == 1 and stats["queries"] == 0  # read through CDC, not a full query
    assert stats["refreshes"] == 0  # the cached access token is still good
    renamed = RecordStore(db, "acme").all("vendors")
    assert {renamed[i]["name"] for i in ("7", "1200", "2499")} == {"Renamed Co"}


def test_a_vendor_deleted_in_quickbooks_is_marked_deleted_on_the_procore_side(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    # Intuit only deactivates vendors; the fake also deletes them, which CDC reports as Deleted.
    realm = connected(keyed, keys, qbo, Seed(vendors=20))
    sync(keyed, keys, db, SyncKind.VENDORS)
    qbo.delete(realm.realm_id, "Vendor", "5")
    counts = sync(keyed, keys, db, SyncKind.VENDORS)
    assert (counts.created, counts.updated, counts.deleted) == (0, 0, 1)
    store = RecordStore(db, "acme")
    assert deleted_ids(store, "vendors") == {"5"}
    assert "5" not in store.all("vendors") and len(store.all("vendors")) == 19
    again = sync(keyed, keys, db, SyncKind.VENDORS)  # the deletion is not applied twice
    assert written(again) == 0


# --- job costs and payments: through the ERP mirror ----------------------------------------------


def age_mirror(db: Database, company: str = "acme", seconds: float = 60.0) -> None:
    """Pretend the company's ERP mirror was refreshed ``seconds`` ago: a refresh serves project
    syncs for ``FRESH`` seconds without asking the ERP again, and a test should not sleep
    through that."""
    with db.engine.begin() as conn:
        conn.execute(
            update(erp_mirror)
            .where(erp_mirror.c.company == company)
            .values(refreshed_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def linked_projects(client: redis.Redis, keys: KeySpace, db: Database, n: int) -> list[str]:
    """The first ``n`` QuickBooks Projects as Procore projects (linked by their job id), read
    by a jobs sync as an admin would see them before linking."""
    sync(client, keys, db, SyncKind.JOBS)
    jobs = sorted(RecordStore(db, "acme").all("jobs"), key=int)[:n]
    store = SettingsStore(client, keys)
    for job in jobs:
        store.add_project("acme", job)
    return jobs


def test_job_costs_and_payments_of_a_project_land_and_a_second_sync_writes_nothing(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(
        keyed,
        keys,
        qbo,
        Seed(
            vendors=5,
            projects=2,
            bills_per_project=3,
            lines_per_bill=2,
            purchases_per_project=1,
            vendor_credits_per_project=1,
            payments_per_project=2,
        ),
    )
    project, other = linked_projects(keyed, keys, db, 2)
    costs = sync(keyed, keys, db, SyncKind.JOB_COSTS, project)
    # 3 Bills x 2 lines + 1 Purchase x 2 lines + 1 VendorCredit x 1 line, all naming the project
    assert costs.created == 9
    lines = RecordStore(db, "acme").all("job_costs", project)
    assert len(lines) == 9 and {line["job"] for line in lines.values()} == {project}
    assert {line["txn_type"] for line in lines.values()} == {"Bill", "Purchase", "VendorCredit"}
    assert all(
        line["amount_cents"] < 0 for line in lines.values() if line["txn_type"] == "VendorCredit"
    )
    paid = sync(keyed, keys, db, SyncKind.PAYMENTS, project)
    payments = RecordStore(db, "acme").all("payments", project)
    assert paid.created == len(payments) == 2
    bills = {line["id"].split("-")[1] for line in lines.values() if line["txn_type"] == "Bill"}
    assert {p["invoice"] for p in payments.values()} <= bills
    # The other project's lines come from the same mirror, without a second full read.
    queries = realm.stats()["queries"]
    assert sync(keyed, keys, db, SyncKind.JOB_COSTS, other).created == 9
    assert realm.stats()["queries"] == queries

    assert written(sync(keyed, keys, db, SyncKind.JOB_COSTS, project)) == 0
    assert written(sync(keyed, keys, db, SyncKind.PAYMENTS, project)) == 0
    age_mirror(db)  # the next syncs ask QuickBooks again (CDC): still nothing to write
    assert written(sync(keyed, keys, db, SyncKind.JOB_COSTS, project)) == 0
    assert written(sync(keyed, keys, db, SyncKind.PAYMENTS, project)) == 0
    assert realm.stats()["cdc"] == 1


def test_a_bill_deleted_in_quickbooks_marks_its_job_cost_lines_deleted_for_its_project(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(
        keyed, keys, qbo, Seed(vendors=5, projects=1, bills_per_project=3, lines_per_bill=2)
    )
    (project,) = linked_projects(keyed, keys, db, 1)
    assert sync(keyed, keys, db, SyncKind.JOB_COSTS, project).created == 6
    bill = sorted(RecordStore(db, "acme").all("job_costs", project))[0].split("-")[1]
    qbo.delete(realm.realm_id, "Bill", bill)
    age_mirror(db)
    counts = sync(keyed, keys, db, SyncKind.JOB_COSTS, project)
    assert (counts.created, counts.updated, counts.deleted) == (0, 0, 2)
    store = RecordStore(db, "acme")
    assert deleted_ids(store, "job_costs", project) == {f"Bill-{bill}-1", f"Bill-{bill}-2"}
    assert len(store.all("job_costs", project)) == 4


def test_after_a_pause_past_the_cdc_window_the_mirror_is_re_read_and_a_deleted_bill_is_seen(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(
        keyed, keys, qbo, Seed(vendors=5, projects=1, bills_per_project=3, lines_per_bill=2)
    )
    (project,) = linked_projects(keyed, keys, db, 1)
    sync(keyed, keys, db, SyncKind.JOB_COSTS, project)
    bill = sorted(RecordStore(db, "acme").all("job_costs", project))[0].split("-")[1]
    qbo.delete(realm.realm_id, "Bill", bill)
    # As if the mirror had not been read for 31 days: a query cannot return the deletion.
    old = (datetime.now(UTC) - timedelta(days=31)).isoformat(timespec="seconds")
    with db.engine.begin() as conn:
        conn.execute(
            update(erp_mirror)
            .where(erp_mirror.c.company == "acme")
            .values(state=json.dumps({"mark": old, "cursor": None}))
        )
    age_mirror(db)
    qbo.reset_stats(realm.realm_id)
    counts = sync(keyed, keys, db, SyncKind.JOB_COSTS, project)
    assert (counts.created, counts.updated, counts.deleted) == (0, 0, 2)
    assert realm.stats()["cdc"] == 0  # a full re-read by query, then the sweep
    assert deleted_ids(RecordStore(db, "acme"), "job_costs", project) == {
        f"Bill-{bill}-1",
        f"Bill-{bill}-2",
    }


def test_reconcile_re_reads_the_mirror_and_fixes_lines_of_a_deletion_it_had_missed(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(
        keyed, keys, qbo, Seed(vendors=5, projects=1, bills_per_project=3, lines_per_bill=2)
    )
    (project,) = linked_projects(keyed, keys, db, 1)
    sync(keyed, keys, db, SyncKind.JOB_COSTS, project)
    bill = sorted(RecordStore(db, "acme").all("job_costs", project))[0].split("-")[1]
    qbo.delete(realm.realm_id, "Bill", bill)  # the mirror is fresh: no sync would look yet
    company = SettingsStore(keyed, keys).get_company("acme")
    bucket = TokenBucket(keyed, keys, "acme", limit_for(keyed, keys, company.erp, "acme"))
    connector = throttled(connector_for(keyed, keys, company), bucket)
    drift = reconcile(db, "acme", SyncKind.JOB_COSTS, project, connector, fix=True)
    assert drift[f"job_costs:{project}"].extra == [f"Bill-{bill}-1", f"Bill-{bill}-2"]
    again = reconcile(db, "acme", SyncKind.JOB_COSTS, project, connector)
    assert all(d.clean for d in again.values())


# --- OAuth: expiry mid-sync, one refresh for many workers ----------------------------------------


def before_request(
    monkeypatch: pytest.MonkeyPatch, actions: dict[int, Callable[[], object]]
) -> list[str]:
    """Run ``actions[n]`` just before the connector's n-th API request (1-based) leaves, so a
    test can change the fake between two pages; returns the URLs requested (token requests are
    not API requests and are not counted)."""
    real_request = qbo_http.request  # what the API module calls, by its own name
    urls: list[str] = []

    def hooked(method: str, url: str, **kwargs: Any) -> httpx.Response:
        urls.append(url)
        action = actions.get(len(urls))
        if action is not None:
            action()
        return real_request(method, url, **kwargs)

    monkeypatch.setattr(qbo_api, "request", hooked)
    return urls


def test_an_access_token_that_expires_mid_sync_is_refreshed_once_and_the_sync_continues(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo, monkeypatch: pytest.MonkeyPatch
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=2500))
    urls = before_request(
        monkeypatch, {2: lambda: qbo.switches(realm.realm_id, expire_access_tokens=True)}
    )
    counts = sync(keyed, keys, db, SyncKind.VENDORS)
    assert counts.created == 2500
    stats = realm.stats()
    # The first token, then one refresh after the 401 on page 2; page 3 reuses the new token.
    assert (stats["refreshes"], stats["unauthorized"], stats["token_requests"]) == (2, 1, 2)
    assert len(urls) == 4  # page 1, page 2 refused, page 2 again, page 3
    assert ConnectionStore(keyed, keys).require("acme").status == "connected"


def test_two_workers_needing_a_token_at_once_cause_exactly_one_refresh(
    keyed: redis.Redis, keys: KeySpace, qbo: FakeQbo, redis_server: RedisServer
) -> None:
    realm = connected(keyed, keys, qbo, Seed())
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def race(refused: str | None) -> None:
        barrier = threading.Barrier(2)

        def worker(name: str) -> None:
            client = redis_server.client()  # each worker its own connection, as processes do
            manager = TokenManager(client, keys, ConnectionStore(client, keys), "acme")
            barrier.wait()
            try:
                got[name] = manager.token(refused=refused)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in ("w1", "w2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    race(None)  # an empty cache: both need the first token
    assert not errors and got["w1"] == got["w2"]
    assert realm.stats()["refreshes"] == 1
    first = got["w1"]
    qbo.reset_stats(realm.realm_id)
    race(first)  # both were refused the cached token at once
    assert not errors and got["w1"] == got["w2"] != first
    assert realm.stats()["refreshes"] == 1 and realm.stats()["refresh_failures"] == 0
    # The rotated refresh token was stored: the one the fake holds now is the stored one.
    secrets, generation = ConnectionStore(keyed, keys).secrets("acme")
    assert secrets.refresh_token == realm.live_refresh_token() and generation == 3


# --- throttling --------------------------------------------------------------------------------


def test_the_connector_stays_under_the_realms_rate_and_concurrency_limits(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=2500, projects=40, bills_per_project=1))
    (project,) = linked_projects(keyed, keys, db, 1)
    qbo.reset_stats(realm.realm_id)
    # The fake answers 429 beyond 2 requests at once or 40 a minute; the company is set just
    # under: 2 in flight, 3/s with a burst of 3 (its three syncs below make about 20 requests).
    qbo.switches(realm.realm_id, latency_ms=150, limits={"rate_per_minute": 40, "concurrency": 2})
    set_limit(keyed, keys, Erp.QUICKBOOKS_ONLINE.value, rate=8, burst=10, requests=2)
    set_company_limit(keyed, keys, "acme", CompanyLimit(rate=3, burst=3))
    age_mirror(db, seconds=3600)
    failures: list[BaseException] = []

    def run(kind: SyncKind, project: str | None = None) -> None:
        try:
            sync(keyed, keys, db, kind, project)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=a)
        for a in ((SyncKind.VENDORS,), (SyncKind.JOBS,), (SyncKind.JOB_COSTS, project))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    stats = realm.stats()
    assert stats["queries"] + stats["cdc"] >= 6  # three syncs' worth, run side by side
    assert stats["throttled"] == 0
    assert stats["max_concurrency"] <= 2
    assert stats["max_requests_per_minute"] <= 40


def test_a_429_with_retry_after_defers_the_run_which_then_completes(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=30))
    qbo.fail_next(realm.realm_id, "429", 1)
    record, outcomes = run_to_end(
        Runner(keyed, keys, db=db, rng=random.Random(1)), delivery("t-429", SyncKind.VENDORS)
    )
    assert outcomes[0].defer_in is not None and outcomes[0].defer_in >= 1.0  # its Retry-After
    assert outcomes[0].retry_in is None  # a deferral: no retry spent
    assert (record.status, record.counts["created"]) == ("succeeded", 30)
    assert realm.stats()["injected_failures"] == 1


# --- errors: 5xx, revoked refresh token, malformed pages, Faults -------------------------------


def test_a_503_is_retried_and_the_retry_succeeds(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=30))
    qbo.fail_next(realm.realm_id, "503", 1)
    record, outcomes = run_to_end(
        Runner(keyed, keys, db=db, rng=random.Random(1)), delivery("t-503", SyncKind.VENDORS)
    )
    assert [o.retry_in is not None for o in outcomes] == [True, False]
    assert (record.status, record.counts["created"]) == ("succeeded", 30)
    assert len(RecordStore(db, "acme").all("vendors")) == 30


def revoked(
    client: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> tuple[QboRealm, Runner, RunRecord, list[Outcome]]:
    """A company that synced once, whose refresh token was then revoked (its access token
    expired with it), and the run that found out."""
    realm = connected(client, keys, qbo, Seed(vendors=30))
    runner = Runner(client, keys, db=db, rng=random.Random(1))
    assert run_to_end(runner, delivery("ok", SyncKind.VENDORS))[0].status == "succeeded"
    qbo.switches(realm.realm_id, revoke_refresh_token=True, expire_access_tokens=True)
    record, outcomes = run_to_end(runner, delivery("revoked", SyncKind.VENDORS))
    return realm, runner, record, outcomes


def test_a_revoked_refresh_token_fails_the_run_once_with_reconnect_and_marks_the_connection(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm, _, record, outcomes = revoked(keyed, keys, db, qbo)
    assert len(outcomes) == 1 and record.status == "failed"  # no retry: it cannot succeed
    assert "reconnect QuickBooks Online for acme" in (record.error or "")
    connection = ConnectionStore(keyed, keys).require("acme")
    assert connection.status == "reconnect_required"
    assert "reconnect QuickBooks Online for acme" in (connection.error or "")
    stats = realm.stats()
    assert (stats["refresh_failures"], stats["token_requests"]) == (1, 2)
    # Any worker asking for a token now fails on the mark without asking Intuit again.
    manager = TokenManager(keyed, keys, ConnectionStore(keyed, keys), "acme")
    for _ in range(3):
        with pytest.raises(BadCredentials, match="reconnect QuickBooks Online for acme"):
            manager.token()
    assert realm.stats()["token_requests"] == 2


def test_a_sync_after_the_reconnect_mark_is_recorded_failed_without_asking_for_a_token(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm, runner, _, _ = revoked(keyed, keys, db, qbo)
    asked = realm.stats()["token_requests"]
    again, outcomes = run_to_end(runner, delivery("again", SyncKind.JOBS))
    assert len(outcomes) == 1 and again.status == "failed"
    assert "reconnect QuickBooks Online for acme" in (again.error or "")
    assert realm.stats()["token_requests"] == asked  # no retry storm at the token endpoint


@pytest.mark.parametrize("mode", ["malformed", "fault200"])
def test_a_bad_page_fails_the_run_with_its_intuit_tid_and_writes_nothing_of_it(
    keyed: redis.Redis,
    keys: KeySpace,
    db: Database,
    qbo: FakeQbo,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=2500))
    before_request(monkeypatch, {2: lambda: qbo.fail_next(realm.realm_id, mode, 1)})
    record, outcomes = run_to_end(
        Runner(keyed, keys, db=db, rng=random.Random(1)), delivery(f"bad-{mode}", SyncKind.VENDORS)
    )
    assert len(outcomes) == 1 and record.status == "failed"  # a Fault is permanent: no retry
    assert re.search(r"intuit_tid [0-9a-f-]{36}", record.error or ""), record.error
    assert len(RecordStore(db, "acme").all("vendors")) == 1000  # page 1 only, none of page 2
    monkeypatch.undo()
    # The next run reads from the old watermark again and completes.
    record, _ = run_to_end(
        Runner(keyed, keys, db=db, rng=random.Random(1)), delivery(f"next-{mode}", SyncKind.VENDORS)
    )
    assert record.status == "succeeded" and len(RecordStore(db, "acme").all("vendors")) == 2500


# --- secrets never appear ----------------------------------------------------------------------


def test_no_secret_appears_in_the_logs_of_a_sync_with_refreshes_and_failures(
    keyed: redis.Redis,
    keys: KeySpace,
    db: Database,
    qbo: FakeQbo,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=1500))
    seen: set[str] = {realm.client_secret, realm.refresh_token}

    def expire() -> None:
        seen.update(tokens(keyed, keys))  # the token about to be refused, and its refresh token
        qbo.switches(realm.realm_id, expire_access_tokens=True)

    before_request(monkeypatch, {2: expire})
    runner = Runner(keyed, keys, db=db, rng=random.Random(1))
    with caplog.at_level(logging.DEBUG):
        assert run_to_end(runner, delivery("s1", SyncKind.VENDORS))[0].status == "succeeded"
        seen.update(tokens(keyed, keys))
        qbo.switches(realm.realm_id, revoke_refresh_token=True, expire_access_tokens=True)
        failed, _ = run_to_end(runner, delivery("s2", SyncKind.JOBS))
    assert failed.status == "failed"
    assert len(seen) >= 5  # the secret, three refresh tokens, two access tokens at least
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "HTTP Request" in text or "finished company=acme" in text  # logging was captured
    assert leaked(text, seen) == []
    assert leaked(failed.error or "", seen) == []


# --- the CDC window: full responses, and a watermark older than 30 days ---------------------


@pytest.fixture
def small_cdc(monkeypatch: pytest.MonkeyPatch) -> int:
    """CDC responses capped at 20 objects on both sides (Intuit's cap is 1,000): a burst of
    changes then needs several responses, as a busy company's would."""
    monkeypatch.setattr(QboConnector, "cdc_max", 20)
    return 20


def test_a_full_cdc_response_is_followed_by_the_next_slice_until_every_change_is_read(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo, small_cdc: int
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=60))
    sync(keyed, keys, db, SyncKind.VENDORS)
    qbo.switches(realm.realm_id, limits={"cdc_max_objects": small_cdc})
    changed = [str(n) for n in range(1, 46)]
    for start in range(0, len(changed), 15):  # three instants, so slices can advance
        qbo.change(realm.realm_id, "Vendor", changed[start : start + 15], {"DisplayName": "New"})
        qbo.advance_clock(realm.realm_id, 2)
    qbo.reset_stats(realm.realm_id)
    counts = sync(keyed, keys, db, SyncKind.VENDORS)
    assert counts.updated == 45 and counts.created == 0
    assert realm.stats()["cdc"] >= 3  # 45 changes, at most 20 a response
    names = RecordStore(db, "acme").all("vendors")
    assert all(names[i]["name"] == "New" for i in changed)


def test_the_mirror_reads_a_burst_of_changed_bills_in_slices(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo, small_cdc: int
) -> None:
    realm = connected(
        keyed, keys, qbo, Seed(vendors=3, projects=1, bills_per_project=40, lines_per_bill=1)
    )
    (project,) = linked_projects(keyed, keys, db, 1)
    assert sync(keyed, keys, db, SyncKind.JOB_COSTS, project).created == 40
    qbo.switches(realm.realm_id, limits={"cdc_max_objects": small_cdc})
    bills = [str(n) for n in range(1, 41)]
    for start in range(0, len(bills), 10):
        qbo.change(realm.realm_id, "Bill", bills[start : start + 10], {"DocNumber": "CHANGED"})
        qbo.advance_clock(realm.realm_id, 2)
    age_mirror(db)
    qbo.reset_stats(realm.realm_id)
    counts = sync(keyed, keys, db, SyncKind.JOB_COSTS, project)
    assert counts.updated == 40
    assert realm.stats()["cdc"] >= 2
    lines = RecordStore(db, "acme").all("job_costs", project)
    assert {line["doc_number"] for line in lines.values()} == {"CHANGED"}


def test_a_watermark_older_than_the_cdc_window_reads_by_query(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    realm = connected(keyed, keys, qbo, Seed(vendors=30))
    sync(keyed, keys, db, SyncKind.VENDORS)
    # As if the company's syncs had been off for 31 days: its watermark is that old.
    old = (datetime.now(UTC) - timedelta(days=31)).isoformat(timespec="seconds")
    keyed.set(keys.cursor("acme", "vendors", None), json.dumps({"vendors": old}))
    qbo.change(realm.realm_id, "Vendor", ["4"], {"DisplayName": "After the pause"})
    qbo.reset_stats(realm.realm_id)
    counts = sync(keyed, keys, db, SyncKind.VENDORS)
    stats = realm.stats()
    assert stats["cdc"] == 0 and stats["queries"] >= 1 and stats["bad_requests"] == 0
    assert counts.updated == 1
    assert RecordStore(db, "acme").all("vendors")["4"]["name"] == "After the pause"


def test_a_full_read_that_lost_its_record_of_what_it_read_sweeps_nothing(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo
) -> None:
    connected(keyed, keys, qbo, Seed(vendors=5, projects=1, bills_per_project=3, lines_per_bill=2))
    (project,) = linked_projects(keyed, keys, db, 1)
    sync(keyed, keys, db, SyncKind.JOB_COSTS, project)
    connector = connector_for(keyed, keys, SettingsStore(keyed, keys).get_company("acme"))
    assert isinstance(connector, QboConnector)
    # As if the seen set had expired before the sweep: 9 ids were read, none are recorded.
    connector._sweep(None, read=9)
    assert deleted_ids(RecordStore(db, "acme"), "job_costs", project) == set()
    age_mirror(db)
    assert sync(keyed, keys, db, SyncKind.JOB_COSTS, project).deleted == 0


def test_a_refresh_whose_mirror_lock_was_taken_over_stops_instead_of_writing_beside_it(
    keyed: redis.Redis, keys: KeySpace, db: Database, qbo: FakeQbo, monkeypatch: pytest.MonkeyPatch
) -> None:
    connected(keyed, keys, qbo, Seed(vendors=5, projects=1, bills_per_project=3, lines_per_bill=2))
    connector = connector_for(keyed, keys, SettingsStore(keyed, keys).get_company("acme"))
    assert isinstance(connector, QboConnector)

    def taken_over(state: dict[str, object], full: bool, renew: Callable[[], None]) -> None:
        keyed.set(keys.mirror_lock("acme"), "another worker")  # our lease lapsed, it took it
        renew()

    monkeypatch.setattr(connector, "_refresh", taken_over)
    with pytest.raises(MustWait):
        connector.refresh()
    assert keyed.get(keys.mirror_lock("acme")) == "another worker"  # its lock left alone
