"""The fake QuickBooks Online server answers as Intuit documents, over real HTTP.

One fake process serves the module; every test makes its own company (realm), so tests never see
each other's data, tokens, switches or counters.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_qbo.client import FakeQbo, HttpResponse, Seed, request

pytestmark = pytest.mark.integration
ALL = "Vendor,Customer,Bill,Purchase,VendorCredit,BillPayment"


@pytest.fixture(scope="module")
def qbo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeQbo]:
    server = FakeQbo.start(tmp_path_factory.mktemp("fake_qbo"))
    yield server
    assert server.stop() == 0, server.log.read_text()


@dataclass
class Company:
    qbo: FakeQbo
    realm_id: str
    client_id: str
    secret: str
    refresh_token: str
    token: str

    def query(self, text: str, token: str | None = None) -> HttpResponse:
        return self.qbo.get(
            f"/v3/company/{self.realm_id}/query", token or self.token, query=text, minorversion="75"
        )

    def rows(self, text: str) -> list[dict[str, Any]]:
        resp = self.query(text)
        assert resp.status == 200, resp.body
        body: dict[str, Any] = resp.json()["QueryResponse"]
        return [row for key, value in body.items() if isinstance(value, list) for row in value]

    def cdc(self, entities: str, since: str) -> HttpResponse:
        return self.qbo.get(
            f"/v3/company/{self.realm_id}/cdc", self.token, entities=entities, changedSince=since
        )

    def now(self) -> str:
        now: str = self.qbo.realm_info(self.realm_id)["now"]
        return now

    def ago(self, seconds: int) -> str:
        return (datetime.fromisoformat(self.now()) - timedelta(seconds=seconds)).isoformat()


def company(qbo: FakeQbo, seed: Seed | None = None, ttl: float | None = None) -> Company:
    realm_id = str(uuid.uuid4().int % 10**15)
    client_id, secret, rt = f"app-{realm_id}", "s3cret", f"rt-{realm_id}"
    qbo.create_realm(realm_id, client_id, secret, rt, seed=seed, access_token_ttl=ttl)
    resp = qbo.refresh(client_id, secret, rt)
    assert resp.status == 200, resp.body
    body = resp.json()
    return Company(qbo, realm_id, client_id, secret, body["refresh_token"], body["access_token"])


def fault_code(resp: HttpResponse) -> str:
    body = resp.json()
    if "Fault" in body:
        code: str = body["Fault"]["Error"][0]["code"]
        return code
    code = body["fault"]["error"][0]["code"]
    return code


def test_a_refresh_rotates_the_refresh_token_and_the_presented_one_dies_at_once(
    qbo: FakeQbo,
) -> None:
    c = company(qbo)
    first = qbo.refresh(c.client_id, c.secret, c.refresh_token)
    assert first.status == 200 and first.header("Cache-Control") == "no-store"
    body = first.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert body["x_refresh_token_expires_in"] == 8726400
    assert body["refresh_token"] != c.refresh_token
    again = qbo.refresh(c.client_id, c.secret, c.refresh_token)
    assert (again.status, again.json()) == (400, {"error": "invalid_grant"})
    assert qbo.refresh(c.client_id, c.secret, body["refresh_token"]).status == 200
    stats = qbo.stats(c.realm_id)
    assert (stats["refreshes"], stats["refresh_failures"]) == (3, 1)


def test_wrong_client_credentials_grant_or_headers_are_oauth_errors(qbo: FakeQbo) -> None:
    c = company(qbo)
    bad = qbo.refresh(c.client_id, "wrong", c.refresh_token)
    assert (bad.status, bad.json()) == (401, {"error": "invalid_client"})
    unknown = qbo.refresh("nobody", c.secret, c.refresh_token)
    assert unknown.status == 401
    assert qbo.refresh(c.client_id, c.secret, "never-issued").json() == {"error": "invalid_grant"}
    basic = base64.b64encode(f"{c.client_id}:{c.secret}".encode()).decode()
    grant = request(
        "POST",
        qbo.token_url,
        body=b"grant_type=client_credentials",
        headers={
            "Authorization": f"Basic {basic}",
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert (grant.status, grant.json()["error"]) == (400, "unsupported_grant_type")
    no_accept = request(
        "POST",
        qbo.token_url,
        body=b"grant_type=refresh_token&refresh_token=x",
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert (no_accept.status, no_accept.json()["error"]) == (400, "invalid_request")


def test_a_revoked_refresh_token_is_invalid_grant_until_reconnected(qbo: FakeQbo) -> None:
    c = company(qbo)
    qbo.switches(c.realm_id, revoke_refresh_token=True)
    assert qbo.refresh(c.client_id, c.secret, c.refresh_token).json() == {"error": "invalid_grant"}
    qbo.switches(c.realm_id, set_refresh_token="reconnected")
    assert qbo.refresh(c.client_id, c.secret, "reconnected").status == 200


def test_an_expired_or_missing_access_token_is_a_401_authentication_fault(qbo: FakeQbo) -> None:
    c = company(qbo, Seed(vendors=1))
    assert c.query("select * from Vendor").status == 200
    qbo.switches(c.realm_id, expire_access_tokens=True)
    expired = c.query("select * from Vendor")
    assert expired.status == 401
    error = expired.json()["fault"]["error"][0]
    assert error["code"] == "3200" and "AuthenticationFailed" in error["message"]
    assert expired.json()["fault"]["type"] == "AUTHENTICATION"
    missing = qbo.get(f"/v3/company/{c.realm_id}/query", None, query="select * from Vendor")
    assert missing.status == 401
    assert qbo.stats(c.realm_id)["unauthorized"] == 2


def test_an_access_token_dies_after_its_ttl(qbo: FakeQbo) -> None:
    c = company(qbo, ttl=0.4)
    assert c.query("select * from Vendor").status == 200
    time.sleep(0.5)  # the token's lifetime must pass
    assert c.query("select * from Vendor").status == 401


def test_a_token_of_one_company_is_forbidden_at_another(qbo: FakeQbo) -> None:
    a, b = company(qbo), company(qbo)
    resp = qbo.get(f"/v3/company/{b.realm_id}/query", a.token, query="select * from Vendor")
    assert resp.status == 403 and fault_code(resp) == "3100"


def test_paging_with_startposition_and_maxresults_covers_every_row_once(qbo: FakeQbo) -> None:
    c = company(qbo, Seed(vendors=250))
    assert c.query("select count(*) from Vendor").json()["QueryResponse"] == {"totalCount": 250}
    for order in ("", " orderby Metadata.LastUpdatedTime"):
        seen: list[str] = []
        start = 1
        while True:
            resp = c.query(f"SELECT * FROM Vendor{order} STARTPOSITION {start} MAXRESULTS 100")
            body = resp.json()["QueryResponse"]
            if not body:
                break
            assert body["startPosition"] == start and body["maxResults"] == len(body["Vendor"])
            seen += [v["Id"] for v in body["Vendor"]]
            start += 100
        assert len(seen) == 250 and len(set(seen)) == 250


def test_an_empty_page_has_no_entity_key(qbo: FakeQbo) -> None:
    c = company(qbo, Seed(vendors=3))
    body = c.query("select * from Vendor startposition 4").json()
    assert body["QueryResponse"] == {} and set(body) == {"QueryResponse", "time"}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("select * from Vendor maxresults 1001", "4001"),
        ("select * from Invoice", "4000"),
        ("select * form Vendor", "4000"),
        ("select * from Vendor where Name = 'x'", "4001"),
        ("select * from Vendor where Id > '3'", "4001"),
        ("select * from Vendor where Active = true or Active = false", "4000"),
    ],
)
def test_a_bad_query_is_a_400_validation_fault(qbo: FakeQbo, text: str, code: str) -> None:
    c = company(qbo)
    resp = c.query(text)
    assert resp.status == 400 and fault_code(resp) == code
    assert resp.json()["Fault"]["type"] == "ValidationFault" and resp.header("intuit_tid")


def test_where_last_updated_time_returns_only_what_changed(qbo: FakeQbo) -> None:
    c = company(qbo, Seed(vendors=40))
    since = c.ago(60)
    before = {v["Id"]: int(v["SyncToken"]) for v in c.rows("select * from Vendor")}
    changed = qbo.change(c.realm_id, "Vendor", ["3", "7", "11"], {"CompanyName": "Renamed"})
    assert [v["SyncToken"] for v in changed] == [str(before[i] + 1) for i in ("3", "7", "11")]
    rows = c.rows(f"select * from Vendor where Metadata.LastUpdatedTime > '{since}'")
    assert [r["Id"] for r in rows] == ["3", "7", "11"]
    assert all(
        r["CompanyName"] == "Renamed" and r["MetaData"]["LastUpdatedTime"] > since for r in rows
    )
    assert len(c.rows(f"select * from Vendor where Metadata.LastUpdatedTime <= '{since}'")) == 37


def test_projects_are_customers_and_inactive_ones_need_active_in(qbo: FakeQbo) -> None:
    c = company(qbo, Seed(vendors=2, projects=10, inactive_every=5))
    projects = c.rows("select * from Customer where IsProject = true")
    assert len(projects) == 8 and all(p["Job"] and p["ParentRef"]["value"] for p in projects)
    every = c.rows("select * from Customer where IsProject = true and Active in (true, false)")
    assert len(every) == 10


def test_transactions_name_projects_and_payments_link_bills(qbo: FakeQbo) -> None:
    c = company(
        qbo,
        Seed(
            vendors=3,
            projects=2,
            bills_per_project=2,
            lines_per_bill=3,
            purchases_per_project=1,
            vendor_credits_per_project=1,
            payments_per_project=2,
        ),
    )
    projects = {p["Id"] for p in c.rows("select * from Customer where IsProject = true")}
    for entity in ("Bill", "Purchase", "VendorCredit"):
        for txn in c.rows(f"select * from {entity}"):
            cents = 0
            for line in txn["Line"]:
                detail = line[line["DetailType"]]
                assert detail["CustomerRef"]["value"] in projects
                assert ("ItemRef" in detail) == (line["DetailType"] == "ItemBasedExpenseLineDetail")
                cents += round(line["Amount"] * 100)
            assert round(txn["TotalAmt"] * 100) == cents
    bills = {b["Id"] for b in c.rows("select * from Bill")}
    for payment in c.rows("select * from BillPayment"):
        assert payment["Line"][0]["LinkedTxn"][0]["TxnType"] == "Bill"
        assert payment["Line"][0]["LinkedTxn"][0]["TxnId"] in bills


def test_cdc_returns_changes_then_deletions_in_intuits_shape(qbo: FakeQbo) -> None:
    c = company(qbo, Seed(vendors=5, projects=1, bills_per_project=2))
    since = c.ago(60)
    qbo.change(c.realm_id, "Vendor", "1", {"Active": False})
    qbo.delete(c.realm_id, "Vendor", "2")
    qbo.delete(c.realm_id, "Bill", "1")
    resp = c.cdc("Vendor,Bill,Purchase", since)
    assert resp.status == 200
    vendors, bills, purchases = resp.json()["CDCResponse"][0]["QueryResponse"]
    assert [v["Id"] for v in vendors["Vendor"]] == ["1", "2"]
    assert vendors["Vendor"][0]["Active"] is False and vendors["maxResults"] == 2
    assert vendors["Vendor"][1]["status"] == "Deleted"
    assert set(vendors["Vendor"][1]) == {"Id", "status", "domain", "MetaData"}
    assert bills["Bill"] == [
        {"Id": "1", "status": "Deleted", "domain": "QBO", "MetaData": bills["Bill"][0]["MetaData"]}
    ]
    assert purchases == {}
    assert [v["Id"] for v in c.rows("select * from Vendor")] == ["3", "4", "5"]


def test_cdc_refuses_a_look_back_beyond_30_days(qbo: FakeQbo) -> None:
    c = company(qbo, Seed(vendors=1))
    since = c.ago(29 * 86400)
    assert c.cdc("Vendor", since).status == 200
    qbo.advance_clock(c.realm_id, 2 * 86400)
    resp = c.cdc("Vendor", since)
    assert (
        resp.status == 400
        and "older than fixed days" in resp.json()["Fault"]["Error"][0]["Message"]
    )


def test_a_full_cdc_response_holds_the_oldest_changes_and_resumes_without_a_gap(
    qbo: FakeQbo,
) -> None:
    c = company(qbo, Seed(vendors=1100, history_days=20))
    by_time = sorted(
        c.rows("select * from Vendor maxresults 1000")
        + c.rows("select * from Vendor startposition 1001 maxresults 1000"),
        key=lambda v: (v["MetaData"]["LastUpdatedTime"], int(v["Id"])),
    )
    first = c.cdc("Vendor", c.ago(25 * 86400)).json()["CDCResponse"][0]["QueryResponse"][0]
    assert first["maxResults"] == 1000
    assert [v["Id"] for v in first["Vendor"]] == [v["Id"] for v in by_time[:1000]]
    newest = first["Vendor"][-1]["MetaData"]["LastUpdatedTime"]
    rest = c.cdc("Vendor", newest).json()["CDCResponse"][0]["QueryResponse"][0]["Vendor"]
    assert {v["Id"] for v in first["Vendor"]} | {v["Id"] for v in rest} == {
        v["Id"] for v in by_time
    }


def test_more_than_the_rate_limit_in_a_minute_is_429_with_retry_after(qbo: FakeQbo) -> None:
    c = company(qbo)
    qbo.switches(c.realm_id, limits={"rate_per_minute": 20})
    answers = [c.query("select * from Vendor") for _ in range(25)]
    assert [a.status for a in answers] == [200] * 20 + [429] * 5
    throttled = answers[-1]
    assert fault_code(throttled) == "3001"
    assert "ThrottleExceeded" in throttled.json()["Fault"]["Error"][0]["Message"]
    assert 1 <= int(throttled.header("Retry-After") or 0) <= 60
    stats = qbo.stats(c.realm_id)
    assert (stats["throttled_rate"], stats["max_requests_per_minute"]) == (5, 25)


def test_more_than_the_concurrency_limit_at_once_is_429(qbo: FakeQbo) -> None:
    c = company(qbo)
    qbo.switches(c.realm_id, latency_ms=300, limits={"concurrency": 2})
    answers: list[HttpResponse] = []
    barrier = threading.Barrier(6)

    def call() -> None:
        barrier.wait()
        answers.append(c.query("select * from Vendor"))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [a for a in answers if a.status == 429]
    assert len(refused) == 4 and all(a.header("Retry-After") is None for a in refused)
    stats = qbo.stats(c.realm_id)
    # A refused request is counted at its arrival: two in flight plus itself.
    assert (stats["throttled_concurrency"], stats["max_concurrency"]) == (4, 3)
    assert stats["in_flight"] == 0


@pytest.mark.parametrize("mode", ["500", "503", "malformed", "fault200", "429"])
def test_a_failure_switch_answers_the_documented_shape_once(qbo: FakeQbo, mode: str) -> None:
    c = company(qbo, Seed(vendors=5))
    qbo.fail_next(c.realm_id, mode)
    resp = c.query("select * from Vendor")
    if mode == "500":
        assert resp.status == 500 and resp.json()["Fault"]["type"] == "SystemFault"
    elif mode == "503":
        assert resp.status == 503 and resp.header("Content-Type") == "text/html"
    elif mode == "malformed":
        assert resp.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(resp.body)
    elif mode == "fault200":
        assert resp.status == 200 and resp.json()["Fault"]["Error"][0]["code"] == "10000"
    else:
        assert resp.status == 429 and resp.header("Retry-After") == "1"
    assert resp.header("intuit_tid")
    assert c.query("select * from Vendor").status == 200
    assert qbo.stats(c.realm_id)["injected_failures"] == 1


def test_stats_count_every_request_and_reset(qbo: FakeQbo) -> None:
    c = company(qbo, Seed(vendors=2))
    qbo.reset_stats(c.realm_id)
    c.query("select * from Vendor")
    c.query("select * from Nothing")
    c.cdc("Vendor", c.ago(10))
    stats = qbo.stats(c.realm_id)
    assert {
        k: stats[k]
        for k in (
            "requests",
            "queries",
            "cdc",
            "ok",
            "bad_requests",
            "throttled",
            "max_concurrency",
        )
    } == {
        "requests": 3,
        "queries": 2,
        "cdc": 1,
        "ok": 2,
        "bad_requests": 1,
        "throttled": 0,
        "max_concurrency": 1,
    }


def test_every_response_has_its_own_intuit_tid_and_json_needs_accept(qbo: FakeQbo) -> None:
    from tests.support.fake_qbo.client import request

    c = company(qbo)
    tids = {c.query("select * from Vendor").header("intuit_tid") for _ in range(5)}
    assert len(tids) == 5 and None not in tids
    xml = request(
        "GET",
        f"{qbo.url}/v3/company/{c.realm_id}/query?query=select%20*%20from%20Vendor",
        headers={"Authorization": f"Bearer {c.token}"},
    )
    assert xml.status == 406


def test_the_process_saves_its_companies_at_a_clean_stop(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = FakeQbo.start(tmp_path / "a", state=state)
    c = company(first, Seed(vendors=3))
    kept = first.change(c.realm_id, "Vendor", "2", {"CompanyName": "Kept"})[0]
    assert first.stop() == 0 and "fake-qbo listening on http://127.0.0.1:" in first.log.read_text()
    second = FakeQbo.start(tmp_path / "b", state=state)
    try:
        resp = second.refresh(c.client_id, c.secret, c.refresh_token)
        assert resp.status == 200
        c.qbo, c.token = second, resp.json()["access_token"]
        vendor = c.rows("select * from Vendor where Id = '2'")[0]
        assert vendor == kept
    finally:
        assert second.stop() == 0
