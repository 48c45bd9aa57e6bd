"""The Procore side of a sync: what the platform shows, upserted by ERP id.

Collections per company: the vendor directory (``vendors``), the job list (``jobs``), standard
cost codes (``cost_codes``), and per project its cost codes (``project_cost_codes:P``), job costs
(``job_costs:P``) and Payments Issued (``payments:P``, each naming its commitment). Records are
stored as canonical JSON (sorted keys), so "unchanged" is a string comparison and writing only
what changed keeps a no-op sync from touching a single key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from config.keys import KeySpace
from erp_sync import lua
from erp_sync.connectors.base import Record


@dataclass
class Counts:
    """What one sync did to the Procore side."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, other: Counts) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged}


@dataclass
class Drift:
    """Differences between the ERP and the Procore side for one collection."""

    missing: list[str] = field(default_factory=list)  # in the ERP, not on the Procore side
    extra: list[str] = field(default_factory=list)  # on the Procore side, not in the ERP
    different: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different)


def canonical(record: Record) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def scoped(name: str, project: str | None) -> str:
    return f"{name}:{project}" if project else name


class ProcoreStore:
    """One company's Procore-side collections (client passed in)."""

    def __init__(self, client: redis.Redis, keys: KeySpace, company: str) -> None:
        self.client, self.keys, self.company = client, keys, company
        self._upsert = lua.load(client, "procore_upsert")

    def upsert(self, name: str, records: Iterable[Record]) -> Counts:
        """Write the records that are new or differ; count created/updated/unchanged."""
        batch = {str(r["id"]): canonical(r) for r in records}
        if not batch:
            return Counts()
        flat = [part for item in batch.items() for part in item]
        created, updated, unchanged = self._upsert(
            keys=[self.keys.procore(self.company, name)], args=flat)
        return Counts(int(created), int(updated), int(unchanged))

    def all(self, name: str) -> dict[str, Record]:
        raw = self.client.hgetall(self.keys.procore(self.company, name))
        return {str(k): json.loads(v) for k, v in raw.items()}

    def payments_by_commitment(self, project: str) -> dict[str, list[Record]]:
        """Payments Issued grouped by commitment, as the project's commitments show them."""
        out: dict[str, list[Record]] = {}
        for record in self.all(scoped("payments", project)).values():
            out.setdefault(str(record.get("commitment")), []).append(record)
        return out

    def drift(self, name: str, erp_records: Iterable[Record]) -> Drift:
        """Compare the whole collection with the ERP's full listing (reconciliation)."""
        erp = {str(r["id"]): canonical(r) for r in erp_records}
        ours = {str(k): str(v) for k, v in
                self.client.hgetall(self.keys.procore(self.company, name)).items()}
        return Drift(
            missing=sorted(set(erp) - set(ours)),
            extra=sorted(set(ours) - set(erp)),
            different=sorted(i for i in set(erp) & set(ours) if erp[i] != ours[i]),
        )
