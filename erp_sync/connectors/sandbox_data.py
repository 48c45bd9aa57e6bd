"""The sandbox ERP's data: deterministic seeding per company, its configuration, and changes.

Each collection is a HASH id -> record (JSON) plus a ZSET id -> revision. Revisions come from one
per-company counter, so "changed since watermark W" is a range read on the ZSET. A change bumps
the counter and writes record and index in one Lua script: a reader can never see revision 11
before revision 10 exists, which would let a watermark skip a record.

Seeding is one MULTI under WATCH of the meta hash, so two workers seeding the same company at once
write it once, and it is deterministic (seeded from the company id), so tests can predict data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.keys import KeySpace
from config.models import first_error
from erp_sync.connectors.base import Record
from erp_sync.errors import InvalidInput, NotFound
from erp_sync.infra import lua

FailKind = Literal["server_error", "rate_limited", "timeout", "bad_credentials"]

COST_TYPES = ("L", "M", "S", "E", "O", "SUB", "OH")
_WORDS = (
    "Apex",
    "Summit",
    "Granite",
    "Harbor",
    "Keystone",
    "Pioneer",
    "Ridge",
    "Cedar",
    "Iron",
    "Valley",
    "Northern",
    "Atlas",
    "Beacon",
    "Liberty",
    "Union",
    "Pacific",
)
_TRADES = (
    "Concrete",
    "Electric",
    "Plumbing",
    "Steel",
    "Drywall",
    "Roofing",
    "Glazing",
    "Mechanical",
    "Paving",
    "Excavation",
    "Masonry",
    "Painting",
    "Framing",
    "Fire",
)


class SandboxConfig(BaseModel):
    """Sizes (used at seeding), paging, latency and fault injection (read on every call)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vendors: int = Field(500, ge=0, le=100_000)
    cost_codes: int = Field(300, ge=0, le=10_000)
    extra_jobs: int = Field(10, ge=0, le=10_000)
    project_cost_codes: int = Field(20, ge=0, le=10_000)
    costs_per_job: int = Field(100, ge=0, le=100_000)
    invoices_per_job: int = Field(20, ge=0, le=10_000)
    page_size: int = Field(500, ge=1, le=10_000)
    latency_ms: float = Field(0.0, ge=0, le=60_000)
    transient_rate: float = Field(0.0, ge=0, le=1)
    rate_limited_rate: float = Field(0.0, ge=0, le=1)
    timeout_rate: float = Field(0.0, ge=0, le=1)
    retry_after: float = Field(1.0, ge=0, le=3600)
    timeout_s: float = Field(0.2, ge=0, le=600)
    permanent: Literal["bad_credentials"] | None = None
    fail_kind: FailKind = "server_error"


TOMBSTONE = "_deleted"


def is_tombstone(record: Record) -> bool:
    """A deleted record keeps its id and revision (so an incremental read sees the deletion)."""
    return bool(record.get(TOMBSTONE))


def collection(name: str, job: str | None = None) -> str:
    """A sandbox collection name; job-level collections carry the job id."""
    return f"{name}:{job}" if job else name


class SandboxData:
    """Reads, seeds and changes one deployment's sandbox ERP data (client passed in)."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys
        self._add = lua.load(client, "sandbox_add_record")

    # --- configuration ----------------------------------------------------------------------
    def config(self, company: str) -> SandboxConfig:
        raw = self.client.hget(self.keys.erp_meta(company), "config")
        return SandboxConfig.model_validate_json(raw) if raw else SandboxConfig()

    def configure(self, company: str, **changes: Any) -> SandboxConfig:
        """Merge ``changes`` into the company's sandbox configuration (validated first)."""
        try:
            new = SandboxConfig.model_validate({**self.config(company).model_dump(), **changes})
        except ValidationError as exc:
            raise InvalidInput(f"invalid sandbox setting {first_error(exc)}") from None
        self.client.hset(self.keys.erp_meta(company), "config", new.model_dump_json())
        return new

    def fail_next(self, company: str, count: int) -> None:
        """Make the next ``count`` ERP calls fail with the configured ``fail_kind``."""
        self.client.hset(self.keys.erp_meta(company), "fail_next", max(count, 0))

    # --- seeding ----------------------------------------------------------------------------
    def seeded(self, company: str) -> bool:
        return bool(self.client.hexists(self.keys.erp_meta(company), "seeded"))

    def ensure_seeded(self, company: str) -> bool:
        """Seed the company on first use (its projects become jobs); True if this call seeded."""
        meta = self.keys.erp_meta(company)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(meta)  # type: ignore[no-untyped-call]
                    if pipe.hexists(meta, "seeded"):
                        return False
                    raw = pipe.hget(meta, "config")
                    cfg = SandboxConfig.model_validate_json(raw) if raw else SandboxConfig()
                    projects = sorted(
                        str(p) for p in self.client.hkeys(self.keys.projects(company))
                    )
                    pipe.multi()
                    self._queue_seed(pipe, company, cfg, projects)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def ensure_job(self, company: str, job: str) -> None:
        """Mirror a Procore project created after seeding as an ERP job (seeded on first use).

        Raises ``NotFound`` when ``job`` is neither an ERP job nor a project of the company.
        """
        if self.client.hexists(self.keys.erp(company, "jobs"), job):
            return
        if not self.client.hexists(self.keys.projects(company), job):
            raise NotFound(f"unknown job {job!r}")
        cfg = self.config(company)
        rng = random.Random(f"{company}:{job}")
        self._write_new("jobs", company, [_job(job, rng)])
        for name, records in _job_records(company, job, cfg).items():
            self._write_new(name, company, records)

    def _queue_seed(
        self, pipe: redis.client.Pipeline, company: str, cfg: SandboxConfig, projects: list[str]
    ) -> None:
        rev = 0
        rng = random.Random(f"{company}:jobs")
        jobs = [*projects, *(f"J{n:04d}" for n in range(1, cfg.extra_jobs + 1))]
        data: dict[str, list[Record]] = {
            "vendors": _vendors(company, cfg.vendors),
            "jobs": [_job(j, rng) for j in jobs],
            "cost_codes": _cost_codes(cfg.cost_codes),
        }
        for job in jobs:
            data.update(_job_records(company, job, cfg))
        meta = self.keys.erp_meta(company)
        for name, records in data.items():
            if not records:
                continue
            pipe.hset(self.keys.erp(company, name), mapping=_dumps(records))  # type: ignore[arg-type]
            index = {str(r["id"]): rev + i for i, r in enumerate(records, start=1)}
            pipe.zadd(self.keys.erp_index(company, name), index)
            rev += len(records)
        pipe.hset(meta, mapping={"rev": rev, "seeded": 1, "config": cfg.model_dump_json()})

    def _write_new(self, name: str, company: str, records: Iterable[Record]) -> None:
        for record in records:
            self._add(
                keys=[
                    self.keys.erp_meta(company),
                    self.keys.erp(company, name),
                    self.keys.erp_index(company, name),
                ],
                args=[record["id"], json.dumps(record, sort_keys=True)],
            )

    # --- changes over time (what `manage.py sandbox` does) ----------------------------------
    def put(self, company: str, name: str, record: Record) -> int:
        """Create or replace one record; returns its new revision."""
        self.ensure_seeded(company)
        return int(
            self._add(
                keys=[
                    self.keys.erp_meta(company),
                    self.keys.erp(company, name),
                    self.keys.erp_index(company, name),
                ],
                args=[record["id"], json.dumps(record, sort_keys=True)],
            )
        )

    def new_id(self, company: str, kind: str, letter: str) -> str:
        """A fresh id; the dash keeps it apart from seeded ids (``V00001`` vs ``V-000001``)."""
        seq = self.client.hincrby(self.keys.erp_meta(company), f"seq:{kind}", 1)
        return f"{letter}-{seq:06d}"

    def delete(self, company: str, name: str, record_id: str) -> int:
        """Delete one record (a tombstone under a new revision); returns the revision."""
        if self.get(company, name, record_id) is None:
            raise NotFound(f"no record {record_id!r} in {name!r} of {company!r}")
        return self.put(company, name, {"id": record_id, TOMBSTONE: True})

    def get(self, company: str, name: str, record_id: str) -> Record | None:
        raw = self.client.hget(self.keys.erp(company, name), record_id)
        record = dict(json.loads(raw)) if raw else None
        return None if record is None or is_tombstone(record) else record

    def all(self, company: str, name: str) -> dict[str, Record]:
        raw = self.client.hgetall(self.keys.erp(company, name))
        records = {str(k): json.loads(v) for k, v in raw.items()}
        return {k: r for k, r in records.items() if not is_tombstone(r)}

    def add_vendor(self, company: str, name: str) -> Record:
        record = {
            "id": self.new_id(company, "vendors", "V"),
            "name": name,
            "active": True,
            "tax_id": "",
            "city": "",
        }
        self.put(company, "vendors", record)
        return record

    def add_cost(self, company: str, job: str, amount_cents: int, cost_code: str) -> Record:
        self.ensure_seeded(company)
        self.ensure_job(company, job)
        record = {
            "id": self.new_id(company, "job_costs", "JC"),
            "job": job,
            "cost_code": cost_code,
            "cost_type": "M",
            "amount_cents": amount_cents,
            "description": "manual cost",
        }
        self.put(company, collection("job_costs", job), record)
        return record

    def add_payment(
        self, company: str, job: str, amount_cents: int, invoice: str | None = None
    ) -> Record:
        self.ensure_seeded(company)
        self.ensure_job(company, job)
        invoices = self.all(company, collection("invoices", job))
        if not invoices:
            raise InvalidInput(f"job {job!r} has no invoices to pay")
        chosen = invoices.get(invoice or sorted(invoices)[0])
        if chosen is None:
            raise NotFound(f"unknown invoice {invoice!r} on job {job!r}")
        record = {
            "id": self.new_id(company, "payments", "PMT"),
            "invoice": chosen["id"],
            "commitment": chosen["commitment"],
            "amount_cents": amount_cents,
            "check_number": "",
        }
        self.put(company, collection("payments", job), record)
        return record


def _dumps(records: list[Record]) -> dict[str, str]:
    return {r["id"]: json.dumps(r, sort_keys=True) for r in records}


def _vendors(company: str, count: int) -> list[Record]:
    rng = random.Random(f"{company}:vendors")
    return [
        {
            "id": f"V{n:05d}",
            "name": f"{rng.choice(_WORDS)} {rng.choice(_TRADES)} {n}",
            "active": rng.random() > 0.05,
            "tax_id": f"{rng.randrange(10**8, 10**9)}",
            "city": rng.choice(_WORDS) + "ville",
        }
        for n in range(1, count + 1)
    ]


def _cost_codes(count: int) -> list[Record]:
    # CSI-style codes: division-section, e.g. 03-310 Concrete.
    return [
        {
            "id": f"{(n // 20) + 1:02d}-{(n % 20) * 10 + 100:03d}",
            "description": f"{_TRADES[n % len(_TRADES)]} {n}",
        }
        for n in range(count)
    ]


def _job(job: str, rng: random.Random) -> Record:
    return {
        "id": job,
        "name": f"{rng.choice(_WORDS)} {rng.choice(_TRADES)} job {job}",
        "status": "open",
    }


def _job_records(company: str, job: str, cfg: SandboxConfig) -> dict[str, list[Record]]:
    rng = random.Random(f"{company}:{job}:records")
    codes = [f"{job}-{n:03d}" for n in range(1, cfg.project_cost_codes + 1)]
    invoices: list[Record] = [
        {
            "id": f"INV{n:05d}",
            "commitment": f"SC-{(n % 7) + 1:03d}",
            "amount_cents": rng.randrange(10_000, 5_000_000),
        }
        for n in range(1, cfg.invoices_per_job + 1)
    ]
    return {
        collection("project_cost_codes", job): [
            {"id": c, "description": f"{rng.choice(_TRADES)} ({job})"} for c in codes
        ],
        collection("job_costs", job): [
            {
                "id": f"JC{n:06d}",
                "job": job,
                "cost_code": rng.choice(codes) if codes else "",
                "cost_type": rng.choice(COST_TYPES),
                "amount_cents": rng.randrange(100, 2_000_000),
                "description": f"{rng.choice(_TRADES)} cost",
            }
            for n in range(1, cfg.costs_per_job + 1)
        ],
        collection("invoices", job): invoices,
        collection("payments", job): [
            {
                "id": f"PMT{n:06d}",
                "invoice": inv["id"],
                "commitment": inv["commitment"],
                "amount_cents": int(inv["amount_cents"]) // 2,
                "check_number": f"{rng.randrange(10**5)}",
            }
            for n, inv in enumerate(invoices[::2], start=1)
        ],
    }
