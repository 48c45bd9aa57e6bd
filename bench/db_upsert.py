"""Database upserts: the Procore-side store's page writes against a per-row ORM baseline.

``.venv/bin/python -m bench.db_upsert`` (5-6 minutes at load 2-4, 8 at load 3-7.6; defaults:
``--rows 100000 --page 1000 --runs 3 --baseline-rows sqlite=20000,postgresql=10000
--dialects sqlite,postgresql``).

What it measures, and why: a project sync writes what it read from the ERP one page at a time,
``RecordStore(db, company).write_page("job_costs", project, page)``, each page in one
transaction by one batched ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the stored ``data``
differs (``erp_sync/db/records.py``). Issue 12 asks that path to be at least 10x a naive
per-row ORM implementation on PostgreSQL, and that a sync with 1 % changed writes exactly the
changed rows. So 100,000 job-cost rows of one project (company ``c1``, project ``p1``), in pages
of 1,000, are written three ways, each timed over all its pages:

- (a) *initial*: into an empty table (a fresh database for every run);
- (b) *rerun*: the same 100k rows again, nothing changed: must write 0 rows (asserted: the
  counts say 0 written, 100k unchanged, and ``sum(version)`` did not move);
- (c) *1 % changed*: 1,000 random rows with a new amount: must update exactly those
  (asserted: ``counts.updated == 1000``, nothing created, ``sum(version)`` moved by 1,000).
  Its rows/s is over the full 100k scanned, as a sync reads them all.

The baseline, measured in the same run on the same engine: a SQLAlchemy ORM class mapped
imperatively onto the same ``job_costs`` table, doing per row what a naive implementation does:
``session.get(JobCost, pk)``, compare the canonical JSON, then ``add`` or set the fields and
``version + 1``; one ``Session`` and one commit per page (autoflush on, the default). It is held to
the same assertions. The baseline runs on fewer rows (``--baseline-rows``: 20k on SQLite, 10k on
PostgreSQL by default; at 100k it alone would take about 4 minutes on SQLite and 9 on PostgreSQL
on this machine) to keep the bench within about 6 minutes. Rows/s stays comparable: the pages
and the work per row are the same, only the table is smaller (which if anything favours the
baseline); its 1 % changed is 1 % of its rows. The store always does the full 100k.

Each figure is the median of ``--runs`` runs with the min-max spread; the ratio is taken per run
(store / baseline), then its median. A run gives the store and the baseline a fresh database
each and goes (a), (b), (c) with the two side by side, scenario by scenario, so a swing in the
machine's load hits both sides of a ratio alike. The 1-minute load average
(``os.getloadavg()``) is recorded before and after every run.

Where: SQLite is a file in a temp dir (``/tmp``, ext4), opened by ``Database`` as the workers
open it (WAL, ``synchronous=NORMAL``). PostgreSQL is a private server from
``tests.support.pgproc.start_postgres`` (tmpfs, ``fsync=off``, ``synchronous_commit=off``: commits
cost no disk flush, for both sides alike), never the machine's own server. In-process: this
measures the store itself, called directly, not a worker; the real path is a Celery worker
calling the same ``write_page`` per page, plus the ERP call and the task's own overhead.

Prints a markdown table and writes the raw figures to ``bench/results/db_upsert.json`` (git
ignored); exits 1 when an assertion about what was written fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, registry

from bench.common import ROOT
from erp_sync.connectors.base import Record
from erp_sync.db.engine import Database
from erp_sync.db.records import Counts, RecordStore, canonical
from erp_sync.db.schema import COLLECTIONS
from tests.support.db import written
from tests.support.pgproc import PostgresServer, start_postgres

COMPANY, PROJECT, COLLECTION = "c1", "p1", "job_costs"
TABLE = COLLECTIONS[COLLECTION].table
COST_TYPES = ("L", "M", "S", "E", "O")
DESCRIPTIONS = ("Concrete cost", "Rebar", "Formwork labour", "Crane hire", "Site office")
SCENARIOS = ("initial", "rerun", "changed")
LABELS = {
    "initial": "(a) initial load, empty table",
    "rerun": "(b) rerun, nothing changed",
    "changed": "(c) 1 % changed (rows/s over all scanned)",
}


class JobCost:
    """The naive baseline's ORM class, mapped imperatively onto the store's own table."""

    company: str
    project: str
    erp_id: str
    job: str | None
    cost_code: str | None
    cost_type: str | None
    amount_cents: int | None
    description: str | None
    data: str
    first_seen: datetime
    last_changed: datetime
    deleted_in_erp: bool
    version: int

    def __init__(self, **values: Any) -> None:
        for name, value in values.items():
            setattr(self, name, value)


registry().map_imperatively(JobCost, TABLE)


def make_rows(n: int) -> list[Record]:
    rng = random.Random(12)
    return [
        {
            "id": f"JC{i:06d}",
            "job": PROJECT,
            "cost_code": f"{PROJECT}-{i % 1000:03d}",
            "cost_type": COST_TYPES[i % len(COST_TYPES)],
            "amount_cents": rng.randrange(100, 10_000_000),
            "description": DESCRIPTIONS[i % len(DESCRIPTIONS)],
        }
        for i in range(1, n + 1)
    ]


def changed_copy(rows: list[Record], seed: int) -> tuple[list[Record], int]:
    """The rows with 1 % of them (random, per seed) given a new amount."""
    picked = random.Random(seed).sample(range(len(rows)), len(rows) // 100)
    out = list(rows)
    for i in picked:
        out[i] = {**rows[i], "amount_cents": int(rows[i]["amount_cents"]) + 1}
    return out, len(picked)


def pages(rows: list[Record], size: int) -> list[list[Record]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# --- the two writers ---------------------------------------------------------------------------


def store_write(db: Database, page: list[Record]) -> Counts:
    """The product's path: one ``write_page`` per page."""
    return RecordStore(db, COMPANY).write_page(COLLECTION, PROJECT, page)


def orm_write(db: Database, page: list[Record]) -> Counts:
    """The naive path: per row get, compare, add or update; one commit per page."""
    counts = Counts()
    at = datetime.now(UTC)
    with Session(db.engine) as session:
        for record in page:
            data = canonical(record)
            fields = {
                "job": record["job"],
                "cost_code": record["cost_code"],
                "cost_type": record["cost_type"],
                "amount_cents": int(record["amount_cents"]),
                "description": record["description"],
            }
            row = session.get(JobCost, (COMPANY, PROJECT, str(record["id"])))
            if row is None:
                session.add(
                    JobCost(
                        company=COMPANY,
                        project=PROJECT,
                        erp_id=str(record["id"]),
                        data=data,
                        first_seen=at,
                        last_changed=at,
                        deleted_in_erp=False,
                        version=1,
                        **fields,
                    )
                )
                counts.created += 1
            elif row.data != data or row.deleted_in_erp:
                for name, value in fields.items():
                    setattr(row, name, value)
                row.data, row.last_changed, row.deleted_in_erp = data, at, False
                row.version = row.version + 1
                counts.updated += 1
            else:
                counts.unchanged += 1
        session.commit()
    return counts


WRITERS: dict[str, Callable[[Database, list[Record]], Counts]] = {
    "store": store_write,
    "orm": orm_write,
}


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Scenario:
    rows: int
    seconds: float
    counts: dict[str, int]
    version_sum_before: int
    version_sum_after: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass
class Run:
    load_before: float
    load_after: float = 0.0
    scenarios: dict[str, Scenario] = field(default_factory=dict)


class Mismatch(AssertionError):
    pass


def table_state(db: Database) -> tuple[int, int]:
    with db.engine.connect() as conn:
        n, total = conn.execute(
            select(func.count(), func.coalesce(func.sum(TABLE.c.version), 0)).where(
                TABLE.c.company == COMPANY, TABLE.c.project == PROJECT
            )
        ).one()
    return int(n), int(total)


def timed(
    db: Database,
    writer: Callable[[Database, list[Record]], Counts],
    batches: Sequence[list[Record]],
) -> tuple[float, Counts, int, int]:
    _, before = table_state(db)
    counts = Counts()
    started = time.perf_counter()
    for page in batches:
        counts.add(writer(db, page))
    seconds = time.perf_counter() - started
    _, after = table_state(db)
    return seconds, counts, before, after


def check(what: str, ok: bool, detail: str) -> None:
    if not ok:
        raise Mismatch(f"{what}: {detail}")


def one_scenario(
    db: Database, side: str, name: str, rows: list[Record], page_size: int, seed: int
) -> Scenario:
    """One scenario for one writer, asserted: (a) and (b) write ``rows``, (c) its 1 % change."""
    n = len(rows)
    data, k = changed_copy(rows, seed) if name == "changed" else (rows, 0)
    seconds, counts, before, after = timed(db, WRITERS[side], pages(data, page_size))
    stored, _ = table_state(db)
    label = f"{side} {name}"
    check(label, stored == n, f"{stored} rows stored, expected {n}")
    if name == "initial":
        check(
            label,
            counts.created == n and written(counts) == n,
            f"counts {counts.as_dict()}, expected {n} created",
        )
        check(label, before == 0 and after == n, f"version sum {before} -> {after}")
    elif name == "rerun":
        check(
            label,
            written(counts) == 0 and counts.unchanged == n,
            f"counts {counts.as_dict()}, expected 0 written",
        )
        check(label, after == before, f"version sum moved {before} -> {after}")
    else:
        check(
            label,
            counts.updated == k and written(counts) == k and counts.unchanged == n - k,
            f"counts {counts.as_dict()}, expected exactly {k} updated",
        )
        check(label, after - before == k, f"version sum moved by {after - before}, not {k}")
    print(
        f"    {side:5} {name:8} {n:>7,} rows {seconds:7.2f} s "
        f"{n / seconds:>9,.0f} rows/s  {counts.as_dict()}",
        flush=True,
    )
    return Scenario(n, seconds, counts.as_dict(), before, after)


class Target:
    """Where one dialect's fresh databases come from."""

    def __init__(self, dialect: str, workdir: Path, pg: PostgresServer | None) -> None:
        self.dialect, self.workdir, self.pg = dialect, workdir, pg
        self.names: dict[int, str] = {}

    def fresh(self) -> Database:
        name = f"bench_upsert_{len(self.names) + 1}"
        if self.pg is not None:
            url = self.pg.create_database(name)
        else:
            url = f"sqlite:///{self.workdir / name}.db"
        db = Database(url)
        self.names[id(db)] = name
        db.upgrade()
        return db

    def done(self, db: Database) -> None:
        db.dispose()
        name = self.names.pop(id(db))
        if self.pg is not None:
            self.pg.drop_database(name)
        else:
            for suffix in ("", "-wal", "-shm"):
                (self.workdir / f"{name}.db{suffix}").unlink(missing_ok=True)


def run_dialect(
    target: Target, rows: list[Record], baseline_rows: int, page_size: int, runs: int
) -> list[Run]:
    out: list[Run] = []
    for r in range(runs):
        run = Run(load_before=os.getloadavg()[0])
        print(f"  run {r + 1}/{runs} (load {run.load_before:.2f})", flush=True)
        sides = {"store": rows, "orm": rows[:baseline_rows]}
        dbs = {side: target.fresh() for side in sides}
        try:
            # side by side, scenario by scenario: a load swing hits both sides of a ratio
            for name in SCENARIOS:
                for side, data in sides.items():
                    run.scenarios[f"{side}.{name}"] = one_scenario(
                        dbs[side], side, name, data, page_size, seed=1000 + r
                    )
        finally:
            for db in dbs.values():
                target.done(db)
        run.load_after = os.getloadavg()[0]
        out.append(run)
    return out


# --- report ------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[Run]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in SCENARIOS:
        store = [r.scenarios[f"store.{name}"].rate for r in runs]
        orm = [r.scenarios[f"orm.{name}"].rate for r in runs]
        summary[name] = {
            "store_rows": runs[0].scenarios[f"store.{name}"].rows,
            "orm_rows": runs[0].scenarios[f"orm.{name}"].rows,
            "store_rows_per_s": spread(store),
            "orm_rows_per_s": spread(orm),
            # ratio per run (both sides of a run saw the same load), then its median
            "ratio": spread([s / o for s, o in zip(store, orm, strict=True)]),
        }
    return summary


def fmt(s: dict[str, float], unit: str = "") -> str:
    if unit == "x":
        return f"{s['median']:.1f}x ({s['min']:.1f}-{s['max']:.1f})"
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| dialect | scenario | store rows/s | ORM per-row rows/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for dialect, block in results["dialects"].items():
        for name in SCENARIOS:
            s = block["summary"][name]
            orm_note = "" if s["orm_rows"] == s["store_rows"] else f" [{s['orm_rows']:,} rows]"
            lines.append(
                f"| {dialect} | {LABELS[name]} | {fmt(s['store_rows_per_s'])} | "
                f"{fmt(s['orm_rows_per_s'])}{orm_note} | {fmt(s['ratio'], 'x')} |"
            )
    return "\n".join(lines)


def parse_baseline(spec: str, rows: int) -> dict[str, int]:
    out = {"sqlite": rows, "postgresql": rows}
    for part in filter(None, spec.split(",")):
        dialect, _, n = part.partition("=")
        out[dialect.strip()] = min(rows, int(n))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--baseline-rows",
        default="sqlite=20000,postgresql=10000",
        help="rows the ORM baseline writes, per dialect (at most --rows)",
    )
    parser.add_argument("--dialects", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "db_upsert.json")
    args = parser.parse_args()
    baseline = parse_baseline(args.baseline_rows, args.rows)
    rows = make_rows(args.rows)
    workdir = Path(tempfile.mkdtemp(prefix="bench-upsert-"))
    results: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.db_upsert " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "page": args.page,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "dialects": {},
    }
    print(
        f"{args.rows:,} job-cost rows in pages of {args.page:,}, {args.runs} runs; "
        f"load average at start: {results['load_at_start']}",
        flush=True,
    )
    started = time.perf_counter()
    pg: PostgresServer | None = None
    try:
        for dialect in args.dialects.split(","):
            if dialect == "postgresql" and pg is None:
                pg = start_postgres(workdir)
            print(f"{dialect} (baseline on {baseline[dialect]:,} rows)", flush=True)
            target = Target(dialect, workdir, pg if dialect == "postgresql" else None)
            runs = run_dialect(target, rows, baseline[dialect], args.page, args.runs)
            results["dialects"][dialect] = {
                "baseline_rows": baseline[dialect],
                "summary": summarise(runs),
                "runs": [
                    {
                        "load_before": r.load_before,
                        "load_after": r.load_after,
                        "scenarios": {
                            k: {**vars(s), "rows_per_s": s.rate} for k, s in r.scenarios.items()
                        },
                    }
                    for r in runs
                ],
            }
    except Mismatch as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["load_at_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    loads = [r["load_before"] for d in results["dialects"].values() for r in d["runs"]]
    loads += [r["load_after"] for d in results["dialects"].values() for r in d["runs"]]
    print(
        f"\nMedian (min-max) of {args.runs} runs; ratio = store / ORM per run. "
        f"1-minute load average {min(loads):.2f}-{max(loads):.2f} "
        f"(start {results['load_at_start'][0]:.2f}, end {results['load_at_end'][0]:.2f}); "
        f"{results['seconds']:.0f} s in all; raw figures: {args.json}\n"
    )
    print(table(results))
    for dialect, block in results["dialects"].items():
        if block["baseline_rows"] != args.rows:
            print(
                f"\n{dialect}: the ORM baseline ran on {block['baseline_rows']:,} rows "
                f"(1 % changed = {block['baseline_rows'] // 100:,}), the store on "
                f"{args.rows:,}; rows/s compares the same per-row work."
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
