"""The admin API under ``/_admin/`` (not Intuit's): create companies, change their data, flip
switches, read counters. No auth; the server answers it on loopback only unless started with
``--allow-remote-admin`` (the demo stack, where the caller is another container).

``GET  /_admin/health``                     ``{"ok": true, "realms": [...]}``
``POST /_admin/realms``                     ``{realm_id, client_id, client_secret, refresh_token,
                                            access_token_ttl?, seed?: {vendors, projects,
                                            bills_per_project, lines_per_bill,
                                            purchases_per_project, vendor_credits_per_project,
                                            payments_per_project, customers?, inactive_every?,
                                            history_days?}}`` -> 201 ``{realm_id, entities}``
``GET  /_admin/realms/{id}``                entities, switches, the live refresh token, now
``POST /_admin/realms/{id}/change``         ``{entity, id | ids, fields?}``: a sparse update of
                                            top-level fields; SyncToken+1, LastUpdatedTime now
``POST /_admin/realms/{id}/delete``         ``{entity, id | ids}``: gone from queries, Deleted
                                            in CDC
``POST /_admin/realms/{id}/create``         ``{entity, fields}``: a new Id; TotalAmt from the lines
                                            when not given
``POST /_admin/realms/{id}/switches``       see ``realm``'s docstring; answers the switch state
``GET  /_admin/realms/{id}/stats``          the counters (``Realm.stats``)
``POST /_admin/realms/{id}/stats/reset``    zero the counters and peaks (after a test's setup)
``POST /_admin/realms/{id}/clock``          ``{advance_seconds}``: move the company's now forward
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from . import timefmt
from .query import ENTITIES
from .realm import Realm
from .store import NotFound

if TYPE_CHECKING:
    from .server import App

JsonObject = dict[str, Any]
REQUIRED = {
    "Vendor": ("DisplayName",),
    "Customer": ("DisplayName",),
    "Bill": ("VendorRef", "Line"),
    "VendorCredit": ("VendorRef", "Line"),
    "Purchase": ("Line",),
    "BillPayment": ("VendorRef", "Line", "TotalAmt", "PayType"),
}


class BadRequest(ValueError):
    """The admin request is wrong (400)."""


def handle(app: App, method: str, parts: list[str], data: JsonObject) -> tuple[int, JsonObject]:
    try:
        return _route(app, method, parts, data)
    except (BadRequest, ValueError, TypeError, AttributeError) as e:
        return 400, {"error": str(e)}
    except NotFound as e:
        return 404, {"error": f"no {e.args[0]}"}


def _route(app: App, method: str, parts: list[str], data: JsonObject) -> tuple[int, JsonObject]:
    if parts == ["health"] and method == "GET":
        return 200, {"ok": True, "realms": sorted(r.realm_id for r in app.all_realms())}
    if parts == ["realms"] and method == "POST":
        realm = Realm.create(data)
        with app.lock:
            if realm.realm_id in app.realms:
                return 409, {"error": f"realm {realm.realm_id} exists"}
            app.realms[realm.realm_id] = realm
        return 201, {"realm_id": realm.realm_id, "entities": realm.store.counts()}
    if len(parts) < 2 or parts[0] != "realms":
        return 404, {"error": "no such admin endpoint"}
    found = app.realm(parts[1])
    if found is None:
        return 404, {"error": f"no realm {parts[1]}"}
    realm = found
    action = "/".join(parts[2:])
    if method == "GET" and action == "":
        return 200, {
            "realm_id": realm.realm_id,
            "entities": realm.store.counts(),
            "switches": realm.switch_state(),
            "refresh_token": realm.tokens.refresh_token,
            "now": timefmt.iso(realm.now()),
        }
    if method == "GET" and action == "stats":
        return 200, realm.stats()
    if method != "POST":
        return 404, {"error": "no such admin endpoint"}
    if action == "switches":
        return 200, realm.switch(data)
    if action == "stats/reset":
        _reset(realm)
        return 200, realm.stats()
    if action == "clock":
        seconds = float(data.get("advance_seconds", 0))
        if seconds < 0:
            raise BadRequest("the clock only moves forward (advance_seconds >= 0)")
        with realm.lock:
            realm.clock_offset += seconds
        return 200, {"now": timefmt.iso(realm.now())}
    if action in ("change", "delete", "create"):
        return _write(realm, action, data)
    return 404, {"error": "no such admin endpoint"}


def _entity(data: JsonObject) -> str:
    name = str(data.get("entity", ""))
    entity = next((e for e in ENTITIES if e.lower() == name.lower()), None)
    if entity is None:
        raise BadRequest(f"entity must be one of {', '.join(ENTITIES)}")
    return entity


def _ids(data: JsonObject) -> list[str]:
    ids = data.get("ids", [data["id"]] if "id" in data else [])
    if not isinstance(ids, list) or not ids:
        raise BadRequest("give id or ids")
    return [str(i) for i in ids]


def _write(realm: Realm, action: str, data: JsonObject) -> tuple[int, JsonObject]:
    entity = _entity(data)
    fields = data.get("fields", {})
    if not isinstance(fields, dict):
        raise BadRequest("fields must be an object")
    with realm.lock:
        now = int(realm.now())
        if action == "create":
            missing = [f for f in REQUIRED[entity] if f not in fields]
            if missing:
                raise BadRequest(f"{entity} needs {', '.join(missing)}")
            if entity in ("Bill", "Purchase", "VendorCredit") and "TotalAmt" not in fields:
                cents = sum(round(float(line.get("Amount", 0)) * 100) for line in fields["Line"])
                fields = {**fields, "TotalAmt": round(cents / 100, 2)}
            return 201, {"created": realm.store.create(entity, fields, now).body}
        ids = _ids(data)
        for entity_id in ids:
            realm.store.get(entity, entity_id)  # all or nothing: every id exists first
        if action == "delete":
            return 200, {"deleted": [realm.store.delete(entity, i, now).id for i in ids]}
        return 200, {"changed": [realm.store.change(entity, i, fields, now).body for i in ids]}


def _reset(realm: Realm) -> None:
    with realm.lock, realm.limits.lock:
        realm.counts = Counter()
        lim = realm.limits
        lim.max_concurrency = lim.in_flight
        lim.max_requests_per_minute = 0
        lim.throttled_rate = lim.throttled_concurrency = 0
        lim.arrivals.clear()
        realm.tokens.refreshes = realm.tokens.refresh_failures = 0
