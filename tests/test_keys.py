"""The key space's inventory: every per-company key has a fate on removal, no company id can name
a fleet-wide key, and a removed company leaves nothing behind outside the kept list."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime

import pytest
import redis

from config.inventory import COMPANY_KEYS, TASK_KEYS, OnRemoval, company_methods
from config.keys import RESERVED_IDS, KeySpace
from config.members import deadline_member, due_member, limit_field
from config.models import AuditEntry, Erp, SyncKind, is_identifier
from erp_sync.alerts.rules import AlertRules, parse_events
from erp_sync.control.connections import Connection, ConnectionStore, Secrets
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.store import SettingsStore
from erp_sync.control.vault import Vault, new_key
from erp_sync.errors import InvalidInput, NotFound, PermissionDenied
from erp_sync.throttle.ratelimit import CompanyLimit, set_company_limit
from tests.support.inventory import holding, leftover

SAMPLES: dict[str, list[str | None]] = {
    "kind": [k.value for k in SyncKind],
    "project": [None, "p1"],
    "collection": ["vendors", "jobs", "meta", "job_costs:p1"],
    "task_id": ["sync:acme:vendors:-:1"],
    "name": ["company"],
}


def _singletons(keys: KeySpace) -> dict[str, str]:
    return {
        name: getattr(keys, name)
        for name, member in vars(KeySpace).items()
        if isinstance(member, property)
    }


def test_every_per_company_key_of_the_key_space_has_a_fate_on_removal() -> None:
    assert set(company_methods()) == set(COMPANY_KEYS)
    taking = {
        n for n, m in vars(KeySpace).items() if inspect.isfunction(m) and not n.startswith("__")
    }
    others = taking - set(company_methods()) - {"_k", "pattern", "company_of", "segments"}
    assert others == set(TASK_KEYS) | {"queue"}, "a new key method needs a fate in the inventory"


def test_no_valid_company_id_can_name_a_fleet_wide_key() -> None:
    keys = KeySpace("p")
    collisions: set[str] = set()
    for name, params in company_methods().items():
        rest = [SAMPLES[p] for p in params[1:]]
        combos: list[list[str | None]] = [[]]
        for values in rest:
            combos = [[*c, v] for c in combos for v in values]
        for combo in combos:
            template = getattr(keys, name)("\x00", *combo)
            pattern = re.compile(re.escape(template).replace("\x00", "([^:]+)"))
            for singleton in _singletons(keys).values():
                found = pattern.fullmatch(singleton.rstrip(":"))
                if found and is_identifier(found.group(1)):
                    collisions.add(found.group(1))
    assert collisions, "the check found no singleton sharing a kind: it tests nothing"
    assert collisions == RESERVED_IDS


@pytest.mark.parametrize("company", sorted(RESERVED_IDS))
def test_company_add_refuses_an_id_that_would_share_a_fleet_wide_key(
    store: SettingsStore, company: str
) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        store.add_company(company, "xero")
    assert not store.client.exists(store.keys.company(company))


def _everything_of(client: redis.Redis, keys: KeySpace, company: str) -> None:
    """Write every key the key space can give a company, and its fields in fleet-wide keys."""
    for name, params in company_methods().items():
        if COMPANY_KEYS[name] is OnRemoval.CHANNEL:
            continue
        combos: list[list[str | None]] = [[]]
        for p in params[1:]:
            combos = [[*c, v] for c in combos for v in SAMPLES[p]]
        for combo in combos:
            key = getattr(keys, name)("\x01", *combo).replace("\x01", company)
            if not client.exists(key):
                client.set(key, "x")
    client.set(keys.executed(f"sync:{company}:vendors:-:1"), "1", ex=60)
    dues = {due_member(company, k): 1.0 for k in SyncKind}
    client.zadd(keys.due, dues)
    client.hset(keys.beat_slots, mapping=dict.fromkeys(dues, "1"))
    client.hset(keys.beat_applied, company, "{}")
    client.hset(keys.paused, company, "{}")
    client.zadd(keys.paused_until, {company: 1.0})
    client.zadd(keys.alert_deadlines, {deadline_member(company, "payments", "p1"): 1.0})


@pytest.mark.integration
def test_removing_a_company_leaves_no_key_of_it_outside_the_kept_list(real: redis.Redis) -> None:
    keys = KeySpace(f"t{datetime.now(UTC).timestamp():.0f}")
    store = SettingsStore(real, keys)
    store.add_company("acme", "quickbooks_online", admin="al")
    store.add_company("stone", "xero", admin="bo")  # a neighbour that must keep everything
    for company in ("acme", "stone"):
        store.add_project(company, "p1")
        _everything_of(real, keys, company)
        set_company_limit(real, keys, company, CompanyLimit(rate=1.0))
    neighbour = holding(real, keys, "stone")

    Lifecycle(store).remove_company("acme", "al")

    assert holding(real, keys, "acme"), "the kept keys (audit, run records, sandbox data) went too"
    assert leftover(real, keys, "acme") == []
    assert real.hget(keys.rate_limit_overrides, limit_field("acme")) is None
    assert holding(real, keys, "stone") == neighbour


def test_a_company_added_again_under_the_same_id_inherits_no_credentials(
    store: SettingsStore, env: pytest.MonkeyPatch
) -> None:
    vault = Vault([new_key()])
    connections = ConnectionStore(store.client, store.keys, vault, store)
    store.add_company("acme", "quickbooks_online", admin="old-admin")
    now = datetime.now(UTC)
    connections.save(
        Connection(
            company="acme",
            erp=Erp.QUICKBOOKS_ONLINE,
            realm_id="9130",
            client_id="ABC",
            base_url="http://127.0.0.1:1/v3",
            token_url="http://127.0.0.1:1/token",
            connected_by="old-admin",
            connected_at=now,
        ),
        Secrets(client_secret="old-secret", refresh_token="old-refresh"),
        AuditEntry(at=now, actor="old-admin", action="connection.connect", company="acme"),
    )
    store.client.set(store.keys.access_token("acme"), "sealed-token")
    set_company_limit(store.client, store.keys, "acme", CompanyLimit(rate=0.5))

    Lifecycle(store).remove_company("acme", "old-admin")
    store.add_company("acme", "quickbooks_online", admin="new-admin")

    assert connections.get("acme") is None
    assert not store.client.exists(store.keys.access_token("acme"))
    assert store.client.hget(store.keys.rate_limit_overrides, limit_field("acme")) is None
    assert store.level_of("acme", "old-admin").value == "none"


def _connection(company: str, by: str) -> tuple[Connection, Secrets, AuditEntry]:
    now = datetime.now(UTC)
    return (
        Connection(
            company=company,
            erp=Erp.QUICKBOOKS_ONLINE,
            realm_id="OLD",
            client_id="ABC",
            base_url="http://127.0.0.1:1/v3",
            token_url="http://127.0.0.1:1/token",
            connected_by=by,
            connected_at=now,
        ),
        Secrets(client_secret="s", refresh_token="r"),
        AuditEntry(at=now, actor=by, action="connection.connect", company=company),
    )


def test_a_connect_that_loses_a_race_with_company_remove_writes_nothing(
    store: SettingsStore,
) -> None:
    connections = ConnectionStore(store.client, store.keys, Vault([new_key()]), store)
    store.add_company("acme", "quickbooks_online", admin="al")
    store.grant("acme", "sam", "standard", actor="al")
    with pytest.raises(PermissionDenied):  # checked inside the write, not only by the CLI
        connections.save(*_connection("acme", "sam"))
    Lifecycle(store).remove_company("acme", "al")  # between the CLI's checks and the write
    with pytest.raises(NotFound, match="unknown company"):
        connections.save(*_connection("acme", "al"))
    assert not store.client.exists(store.keys.connection("acme"))


def test_scans_skip_only_fleet_wide_keys_not_companies_stored_under_a_reserved_id() -> None:
    keys = KeySpace("p")
    assert keys.company_of("runs", keys.last_runs) is None
    assert keys.company_of("runs", keys.runs("overrides")) == "overrides"  # made before reserving
    assert keys.company_of("connection", keys.connection("last")) == "last"
    assert keys.company_of("connection", keys.access_token("acme")) is None


def test_a_company_removed_before_removals_were_recorded_keeps_a_readable_audit(
    store: SettingsStore,
) -> None:
    store.add_company("old", "xero", admin="al")
    Lifecycle(store).remove_company("old", "al")
    store.client.hdel(store.keys.removed, "old")  # as an older release removed it
    gone = store.outlived("old")
    assert gone is not None and gone.at is None
    assert store.audit("old")[0].action == "company.remove"
    with pytest.raises(NotFound):
        store.outlived("never-was")


@pytest.mark.parametrize("action", ["grant", "settings", "alert"])
def test_an_admin_action_that_loses_a_race_with_company_remove_writes_nothing_back(
    store: SettingsStore, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    company = store.add_company("acme", "xero", admin="al")
    Lifecycle(store).remove_company("acme", "al")
    # The window between a command's own checks and its write: the checks saw the company.
    monkeypatch.setattr(store, "get_company", lambda _id: company)
    monkeypatch.setattr(store, "require", lambda *_a: None)
    before = sorted(str(k) for k in store.client.scan_iter(f"{store.keys.prefix}:*"))
    with pytest.raises(NotFound, match="unknown company 'acme'"):
        if action == "grant":
            store.grant("acme", "mallory", "admin", actor="al")
        elif action == "settings":
            store.update_settings("acme", "al", {"refresh_erp_job_list": False})
        else:
            AlertRules(store).add(
                "acme",
                "al",
                url="https://hooks.example.com/x",
                events=parse_events(None),
                failures=1,
                secret=None,
            )
    assert sorted(str(k) for k in store.client.scan_iter(f"{store.keys.prefix}:*")) == before
