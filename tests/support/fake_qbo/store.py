"""One company's entities: Ids, SyncTokens, MetaData, and the tombstones CDC reports.

Every entity carries ``Id`` (a string), ``SyncToken`` (a string, "0" at creation, +1 on every
change), ``domain: "QBO"``, ``sparse: false`` and ``MetaData.CreateTime`` / ``LastUpdatedTime``.
Assumptions:

- Ids are numbered per entity type from 1, so Vendor "7", Customer "7" and Bill "7" coexist (in
  QuickBooks name lists and transactions do draw from different sequences): a client keying
  records by Id alone collides here.
- A deletion removes the entity from queries at once and leaves a tombstone that CDC reports as
  ``{"Id", "status": "Deleted", "domain": "QBO", "MetaData": {"LastUpdatedTime"}}`` (Intuit's
  CDC sample). Intuit only deactivates Vendors and Customers; the fake lets the admin API delete
  them anyway (tests need a deletion of each kind) and ``Active: false`` is a change like any.
- Admin changes replace top-level fields (a sparse update); ``Id``, ``SyncToken``, ``MetaData``,
  ``domain`` and ``sparse`` cannot be set from outside. A change builds a new body (copy on
  write), so a response can be serialised outside the company's lock.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from . import timefmt
from .query import ENTITIES

JsonObject = dict[str, Any]
SYSTEM_FIELDS = ("Id", "SyncToken", "MetaData", "domain", "sparse")


class NotFound(KeyError):
    """No such entity (or it is deleted)."""


@dataclass
class Record:
    body: JsonObject
    created: int
    updated: int

    @property
    def id(self) -> str:
        return str(self.body["Id"])


@dataclass
class Tombstone:
    id: str
    deleted: int

    def body(self) -> JsonObject:
        return {
            "Id": self.id,
            "status": "Deleted",
            "domain": "QBO",
            "MetaData": {"LastUpdatedTime": timefmt.iso(self.deleted)},
        }


def id_key(value: str) -> tuple[int, str]:
    """Ids sort as numbers (Intuit's are numeric strings)."""
    return (int(value), value) if value.isdigit() else (1 << 62, value)


@dataclass
class Store:
    records: dict[str, dict[str, Record]] = field(default_factory=lambda: {e: {} for e in ENTITIES})
    tombstones: dict[str, dict[str, Tombstone]] = field(
        default_factory=lambda: {e: {} for e in ENTITIES}
    )
    next_id: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENTITIES, 1))

    def create(
        self,
        entity: str,
        fields: JsonObject,
        created: int,
        updated: int | None = None,
        sync_token: int = 0,
    ) -> Record:
        new_id = str(self.next_id[entity])
        self.next_id[entity] += 1
        updated = created if updated is None else updated
        body = {
            "Id": new_id,
            "SyncToken": str(sync_token),
            "domain": "QBO",
            "sparse": False,
            **{k: v for k, v in fields.items() if k not in SYSTEM_FIELDS},
            "MetaData": {
                "CreateTime": timefmt.iso(created),
                "LastUpdatedTime": timefmt.iso(updated),
            },
        }
        record = Record(body, created, updated)
        self.records[entity][new_id] = record
        return record

    def get(self, entity: str, entity_id: str) -> Record:
        record = self.records[entity].get(entity_id)
        if record is None:
            raise NotFound(f"{entity} {entity_id}")
        return record

    def change(self, entity: str, entity_id: str, fields: JsonObject, now: int) -> Record:
        record = self.get(entity, entity_id)
        # Copy on write: a reader serialising the old body outside the lock sees it whole.
        body = {
            **record.body,
            **{k: copy.deepcopy(v) for k, v in fields.items() if k not in SYSTEM_FIELDS},
        }
        record.updated = max(now, record.updated)
        body["SyncToken"] = str(int(record.body["SyncToken"]) + 1)
        body["MetaData"] = {
            **record.body["MetaData"],
            "LastUpdatedTime": timefmt.iso(record.updated),
        }
        record.body = body
        return record

    def delete(self, entity: str, entity_id: str, now: int) -> Tombstone:
        record = self.get(entity, entity_id)
        del self.records[entity][entity_id]
        tomb = Tombstone(entity_id, max(now, record.updated))
        self.tombstones[entity][entity_id] = tomb
        return tomb

    def counts(self) -> dict[str, int]:
        return {e: len(rows) for e, rows in self.records.items()}

    def to_json(self) -> JsonObject:
        return {
            "records": {
                e: [[r.body, r.created, r.updated] for r in rows.values()]
                for e, rows in self.records.items()
            },
            "tombstones": {
                e: [[t.id, t.deleted] for t in rows.values()] for e, rows in self.tombstones.items()
            },
            "next_id": self.next_id,
        }

    @classmethod
    def from_json(cls, data: JsonObject) -> Store:
        store = cls()
        for entity, rows in data["records"].items():
            for body, created, updated in rows:
                store.records[entity][str(body["Id"])] = Record(body, created, updated)
        for entity, rows in data["tombstones"].items():
            for tomb_id, deleted in rows:
                store.tombstones[entity][tomb_id] = Tombstone(tomb_id, deleted)
        store.next_id.update(data["next_id"])
        return store
