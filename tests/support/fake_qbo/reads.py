"""The two read operations: the query endpoint and change data capture (CDC).

Query answers ``{"QueryResponse": {"<Entity>": [...], "startPosition": n, "maxResults": <count
returned>}, "time": ...}``; a page with no rows is ``{"QueryResponse": {}, "time": ...}`` (what
Intuit sends, no entity key and no positions); ``COUNT(*)`` is ``{"QueryResponse": {"totalCount":
n}}``. Rows are filtered, ordered and cut per ``query``'s docstring.

CDC answers ``{"CDCResponse": [{"QueryResponse": [<one element per requested entity, in request
order>]}], "time": ...}`` where an element is ``{"<Entity>": [...], "startPosition": 1,
"maxResults": <count>}``, or ``{}`` when nothing of that entity changed (assumed: Intuit's sample
omits unchanged entities' contents). Deleted objects are ``{"Id", "status": "Deleted", "domain",
"MetaData": {"LastUpdatedTime"}}``. Intuit documents that objects are grouped by type, ordered by
last update within a group, deleted ones after the active ones, at most 1,000 objects a
response, and a look-back of at most 30 days. Assumptions:

- ``changedSince`` is INCLUSIVE (``LastUpdatedTime >= changedSince``) and its look-back is
  measured against the realm's now: older than exactly 30 days is a 400 Fault.
- Truncation: of all the changes asked for, the OLDEST ``cdc_max_objects`` (1,000) are returned
  (by time, then entity in request order, then Id), then grouped as above. So a full response
  can be resumed from its newest ``LastUpdatedTime``: nothing is skipped, and objects of that
  second come again (many share a second; a client must be idempotent and must not loop when
  more than 1,000 changes share one second).
- ``entities`` names are case-insensitive and only the six entities the fake serves are allowed
  (others are a 400 Fault); a repeated name is served once.
- Every object is the full current payload (Intuit: "the full payload for each object").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import faults, query, timefmt
from .realm import Realm
from .store import Record, Tombstone, id_key

JsonObject = dict[str, Any]
_OPS: dict[str, Callable[[float, float], bool]] = {
    "=": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}
_DEFAULTS = {"Active": True, "IsProject": False, "Job": False}


def _matches(record: Record, cond: query.Condition) -> bool:
    if cond.field in ("updated", "created"):
        value = record.updated if cond.field == "updated" else record.created
        return _OPS[cond.op](value, float(cond.values[0]))
    if cond.field == "Id":
        return record.id in cond.values
    return bool(record.body.get(cond.field, _DEFAULTS[cond.field])) in cond.values


def run_query(realm: Realm, text: str) -> bytes:
    """The JSON answer to a query, or ``FaultError`` (400) as Intuit would refuse it."""
    stamp = timefmt.iso_ms(realm.now())
    try:
        q = query.parse(text)
    except query.ParseError as e:
        raise faults.FaultError(400, faults.parse_error(str(e), stamp)) from None
    except query.Invalid as e:
        raise faults.FaultError(400, faults.invalid_query(str(e), stamp)) from None
    conds = list(q.where)
    if q.entity in query.NAME_LISTS and not any(c.field == "Active" for c in conds):
        conds.append(query.Condition("Active", "in", [True]))
    with realm.lock:
        rows = [
            r for r in realm.store.records[q.entity].values() if all(_matches(r, c) for c in conds)
        ]
        if q.order_by == "Id":
            rows.sort(key=lambda r: id_key(r.id), reverse=q.descending)
        else:
            attr = q.order_by
            rows.sort(key=lambda r: (getattr(r, attr), id_key(r.id)), reverse=q.descending)
        page = [r.body for r in rows[q.start - 1 : q.start - 1 + q.max_results]]
    if q.count:
        return _dump({"QueryResponse": {"totalCount": len(rows)}, "time": stamp})
    if not page:
        return _dump({"QueryResponse": {}, "time": stamp})
    return _dump(
        {
            "QueryResponse": {q.entity: page, "startPosition": q.start, "maxResults": len(page)},
            "time": stamp,
        }
    )


def cdc(realm: Realm, entities: str | None, changed_since: str | None) -> bytes:
    """The JSON answer to a CDC request, or ``FaultError`` (400)."""
    now = realm.now()
    stamp = timefmt.iso_ms(now)
    if not entities or not changed_since:
        raise faults.FaultError(
            400,
            faults.validation(
                "Invalid Request", "Both entities and changedSince are required for cdc", stamp
            ),
        )
    names: list[str] = []
    for raw in entities.split(","):
        name = next((e for e in query.ENTITIES if e.lower() == raw.strip().lower()), None)
        if name is None:
            raise faults.FaultError(
                400,
                faults.validation(
                    "Invalid entity", f"Entity {raw.strip()} is not supported for cdc", stamp
                ),
            )
        if name not in names:
            names.append(name)
    try:
        since = timefmt.parse(changed_since)
    except ValueError:
        raise faults.FaultError(
            400,
            faults.validation(
                "Invalid Request", f"Invalid changedSince date time: {changed_since}", stamp
            ),
        ) from None
    if since < now - 30 * timefmt.DAY:
        message = (
            f"Operation cdc with changedSince date {changed_since} which is older than "
            f"fixed days is not supported."
        )
        raise faults.FaultError(400, faults.validation(message, message, stamp))
    with realm.lock:
        picked: list[tuple[int, int, tuple[int, str], int, Record | Tombstone]] = []
        for n, name in enumerate(names):
            picked += [
                (r.updated, n, id_key(r.id), 0, r)
                for r in realm.store.records[name].values()
                if r.updated >= since
            ]
            picked += [
                (t.deleted, n, id_key(t.id), 1, t)
                for t in realm.store.tombstones[name].values()
                if t.deleted >= since
            ]
        picked.sort(key=lambda p: p[:4])
        picked = picked[: realm.cdc_max_objects]
        groups: list[JsonObject] = []
        for n, name in enumerate(names):
            mine = sorted((p for p in picked if p[1] == n), key=lambda p: (p[3], p[0], p[2]))
            if not mine:
                groups.append({})
                continue
            groups.append(
                {name: [_payload(p[4]) for p in mine], "startPosition": 1, "maxResults": len(mine)}
            )
    return _dump({"CDCResponse": [{"QueryResponse": groups}], "time": stamp})


def _payload(item: Record | Tombstone) -> JsonObject:
    return item.body() if isinstance(item, Tombstone) else item.body


def _dump(body: JsonObject) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
