"""Redis footprint of a company and of a queued message, measured on a private redis-server.

    .venv/bin/python -m bench.footprint [--companies 10000] [--projects 20] [--users 5]

One template company is made through the product's own paths: ``company add``, user grants,
projects, settings changes (``SettingsStore``), then one run of each of its syncs on a real
``celery -A worker worker`` (the sandbox ERP, run history into a migrated SQLite file). Its keys
are then copied (DUMP/RESTORE, TTLs kept) to ``companies - 1`` companies with ids of the same
length, and beat's engine rebuilds every company's schedule, so the fleet holds ``companies``
companies in the state one sync round leaves. Measured: ``MEMORY USAGE`` of every key by family
(per-company keys: the template's; fleet-wide structures: over ``companies``) and ``INFO memory``
deltas around the copy and the rebuild. Then the lists that grow to a cap (audit, denied changes,
run history) are filled to their caps through the same paths on three companies, and a queued
task message (as beat builds it) is measured by pushing ``--messages`` of each kind.
Sandbox-ERP keys (``erp``, ``erpidx``, ``erpcalls``) exist only with the sandbox: left out.
Results: stdout (markdown) and bench/results/footprint.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, cast

import redis
from celery import Celery

from bench.common import ROOT, median
from config.keys import KeySpace
from config.models import Erp, PaymentsFrequency, SyncKind
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.beat.messages import MessageFactory
from erp_sync.connectors.sandbox_data import SandboxData
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import AUDIT_CAP
from erp_sync.db import Database
from erp_sync.errors import PermissionDenied
from erp_sync.infra.slots import task_id
from erp_sync.runs.records import HISTORY_CAP, RunRecords
from erp_sync.throttle.ratelimit import set_limit
from tests.support import procs
from tests.support.erp import Sender
from tests.support.redisproc import RedisServer
from tests.support.runs import recent_runs

PREFIX = "fp"
SANDBOX = {"erp", "erpidx", "erpcalls"}
FREQS = [f.value for f in PaymentsFrequency if f is not PaymentsFrequency.NEVER]
SLOT = 1_790_000_000.0
# What the hourly audit archive task keeps in Redis (ERP_SYNC_AUDIT_KEEP's default); AUDIT_CAP
# is the backstop when it does not run.
AUDIT_KEEP = 200


def cid(n: int) -> str:
    return f"c{n:07d}"


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def family(key: str) -> str:
    """``fp:watermark:c0000000:job_costs:p001`` -> ``watermark``; a few kinds are two deep."""
    parts = key.split(":")
    if parts[1] in ("optout", "alerts") and len(parts) > 3:
        return f"{parts[1]}:{parts[-1]}"
    if parts[1] in ("ratelimit", "connection") and len(parts) > 3:
        return f"{parts[1]}:{parts[3]}"
    return parts[1]


def template(
    server: RedisServer,
    logs: Path,
    keys: KeySpace,
    company: str,
    projects: int,
    users: int,
    changes: int,
) -> None:
    """One company as the product leaves it after one round of its syncs."""
    client = server.client()
    store = SettingsStore(client, keys)
    store.add_company(
        company, Erp.XERO.value, name="Acme Construction Group LLC", timezone="America/Chicago"
    )
    for u in range(users):
        store.grant(
            company, f"user{u:02d}@acme-construction.example", "admin" if u == 0 else "standard"
        )
    for p in range(projects):
        store.add_project(company, f"p{p:03d}", name=f"Project {p:03d} - 1200 Main St tower")
    admin = "user00@acme-construction.example"
    for n in range(changes):
        store.update_settings(
            company, admin, {"payments_for_synced_invoices": FREQS[n % len(FREQS)]}
        )
    data = SandboxData(client, keys)
    data.configure(
        company,
        latency_ms=0,
        vendors=50,
        cost_codes=5,
        extra_jobs=0,
        project_cost_codes=3,
        costs_per_job=20,
        invoices_per_job=10,
    )
    data.ensure_seeded(company)
    set_limit(client, keys, Erp.XERO.value, 10_000, 10_000)
    env = {"ERP_SYNC_REDIS_URL": server.url, "ERP_SYNC_KEY_PREFIX": keys.prefix}
    worker = procs.worker("fp-worker", env, logs, concurrency=4, extra=["-l", "WARNING"])
    sender = Sender(env)
    try:
        ids = [
            sender.send(
                SyncKind.VENDORS, company, f"sync:{company}:vendors:-:{SLOT:.0f}", slot_ts=SLOT
            ),
            sender.send(SyncKind.JOBS, company, f"sync:{company}:jobs:-:{SLOT:.0f}", slot_ts=SLOT),
        ]
        for kind in (SyncKind.JOB_COSTS, SyncKind.PAYMENTS):
            ids += [
                sender.send(
                    kind,
                    company,
                    f"sync:{company}:{kind.value}:p{p:03d}:{SLOT:.0f}",
                    f"p{p:03d}",
                    slot_ts=SLOT,
                )
                for p in range(projects)
            ]
        markers = [keys.executed(i) for i in ids]
        procs.wait_until(
            lambda: client.exists(*markers) == len(ids),
            180,
            f"template syncs did not finish; see {worker.log}",
            interval=0.2,
        )
    finally:
        sender.close()
        worker.stop()


def company_keys(client: redis.Redis, keys: KeySpace, company: str) -> list[str]:
    found = [str(k) for k in client.scan_iter(f"{keys.prefix}:*{company}*", count=5000)]
    return sorted(k for k in found if family(k) not in SANDBOX)


def by_family(client: redis.Redis, names: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"keys": 0, "bytes": 0})
    for name in names:
        out[family(name)]["keys"] += 1
        out[family(name)]["bytes"] += int(client.memory_usage(name, samples=0) or 0)
    return dict(out)


def clone(
    raw: redis.Redis, names: list[str], source: str, targets: list[str], keys: KeySpace
) -> None:
    """Copy ``source``'s keys to each target id (same length), TTLs kept, and enrol them."""
    pipe = raw.pipeline(transaction=False)
    for name in names:
        pipe.dump(name)
        pipe.pttl(name)
    replies = pipe.execute()
    dumps = list(zip(names, replies[0::2], replies[1::2], strict=True))
    for start in range(0, len(targets), 200):
        pipe = raw.pipeline(transaction=False)
        for target in targets[start : start + 200]:
            for name, blob, ttl in dumps:
                pipe.restore(name.replace(source, target), max(int(ttl), 0), blob)
            pipe.sadd(keys.companies, target)
            pipe.hset(keys.company_folds, target.casefold(), target)
        pipe.execute()


def fill_caps(client: redis.Redis, keys: KeySpace, company: str) -> dict[str, int]:
    """Audit, denied changes and run history of ``company`` filled to their caps."""
    store = SettingsStore(client, keys)
    admin, other = "user00@acme-construction.example", "user01@acme-construction.example"
    for n in range(AUDIT_CAP):
        store.update_settings(
            company, admin, {"payments_for_synced_invoices": FREQS[n % len(FREQS)]}
        )
    for n in range(AUDIT_CAP):
        with contextlib.suppress(PermissionDenied):  # refused: a denied-change entry
            store.update_settings(
                company, other, {"payments_for_synced_invoices": FREQS[n % len(FREQS)]}
            )
    history = RunRecords(client, keys)
    real = recent_runs(history, company, HISTORY_CAP)
    for n in range(HISTORY_CAP):
        record = real[n % len(real)]
        slot = SLOT + 3600 * (n + 1)
        history.save(
            record.model_copy(
                update={  # a copied record names the template
                    "company": company,
                    "task_id": task_id(company, SyncKind(record.kind), record.project, slot),
                }
            )
        )
    assert client.llen(keys.history(company)) == HISTORY_CAP
    assert client.llen(keys.audit(company)) == AUDIT_CAP
    out = {
        name: int(client.memory_usage(key, samples=0) or 0)
        for name, key in (
            ("audit", keys.audit(company)),
            ("denied", keys.denied(company)),
            ("history", keys.history(company)),
            ("runs", keys.runs(company)),
        )
    }
    scratch = f"{keys.prefix}:scratch:audit"  # the audit as the archive task leaves it
    client.copy(keys.audit(company), scratch)
    client.ltrim(scratch, 0, AUDIT_KEEP - 1)
    out["audit_at_keep"] = int(client.memory_usage(scratch, samples=0) or 0)
    client.delete(scratch)
    return out


def messages(client: redis.Redis, keys: KeySpace, count: int) -> dict[str, dict[str, float]]:
    factory = MessageFactory(Celery("fp"), keys, origin="beat@host:1234:abcdef")
    out = {}
    for kind, project in ((SyncKind.VENDORS, None), (SyncKind.JOB_COSTS, "p000")):
        queue = f"{keys.prefix}:scratch:{kind.value}"
        before = used(client)
        for start in range(0, count, 1000):
            client.lpush(
                queue,
                *(
                    factory.build_many(cid(start + i), kind, (project,), SLOT)[0]
                    for i in range(min(1000, count - start))
                ),
            )
        sample = factory.build_many(cid(0), kind, (project,), SLOT)[0]
        out[kind.value] = {
            "json_bytes": len(sample.encode()),
            "used_memory_per_message": (used(client) - before) / count,
            "memory_usage_per_message": int(client.memory_usage(queue, samples=0) or 0) / count,
        }
        client.delete(queue)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--companies", type=int, default=10_000)
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--changes", type=int, default=5, help="settings changes (audit)")
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    keys = KeySpace(PREFIX)
    results: dict[str, Any] = {"args": vars(args), "load": [os.getloadavg()[0]]}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        db_url = f"sqlite:///{logs / 'runs.db'}"
        Database(db_url).upgrade()
        os.environ["ERP_SYNC_DATABASE_URL"] = db_url  # the worker's (procs passes it on)
        server = RedisServer(logs / "redis", extra=["--appendonly", "no"]).start()
        client, raw = server.client(), redis.Redis.from_url(server.url)
        try:
            base = used(client)
            source = cid(0)
            template(server, logs, keys, source, args.projects, args.users, args.changes)
            names = company_keys(client, keys, source)
            results["template"] = by_family(client, names)
            before = used(client)
            started = time.perf_counter()
            clone(raw, names, source, [cid(n) for n in range(1, args.companies)], keys)
            results["clone_s"] = time.perf_counter() - started
            after_clone = used(client)
            engine = BeatEngine(
                Celery("fp"),
                client,
                keys,
                EngineConfig(log_dispatches=False, max_block=0.0),
                node="footprint",
            )
            engine.step()
            engine.resync()
            members = cast(list[tuple[str, float]], client.zrange(keys.due, 0, -1, withscores=True))
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(members), 5000):  # each entry's last dispatched slot
                pipe.hset(
                    keys.beat_slots,
                    mapping={
                        str(m): repr(float(s) - 3600) for m, s in members[start : start + 5000]
                    },
                )
            pipe.execute()
            engine.close()
            after_rebuild = used(client)
            n = args.companies
            assert client.hlen(keys.beat_applied) == n and client.scard(keys.companies) == n
            shared = [
                keys.companies,
                keys.company_folds,
                keys.due,
                keys.beat_applied,
                keys.beat_slots,
                keys.changes,
            ]
            results["fleet"] = {
                k.removeprefix(f"{PREFIX}:"): int(client.memory_usage(k, samples=0) or 0)
                for k in shared
            }
            results["stream_entries"] = int(client.xlen(keys.changes))
            results["info"] = {
                "base": base,
                "template_and_sandbox": before - base,
                "clone_per_company": (after_clone - before) / (n - 1),
                "rebuild_per_company": (after_rebuild - after_clone) / n,
                "used_memory_total": after_rebuild,
                "companies": n,
            }
            caps = [fill_caps(client, keys, cid(k)) for k in range(3)]
            results["caps"] = {name: [c[name] for c in caps] for name in caps[0]}
            results["caps_len"] = {"audit": AUDIT_CAP, "denied": AUDIT_CAP, "history": HISTORY_CAP}
            results["stream_bytes_per_entry"] = int(
                client.memory_usage(keys.changes, samples=0) or 0
            ) / max(int(client.xlen(keys.changes)), 1)
            results["messages"] = messages(client, keys, args.messages)
            results["load"].append(os.getloadavg()[0])
        finally:
            raw.close()
            server.stop()
            server.close_clients()
    print_report(results)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "footprint.json").write_text(json.dumps(results, indent=2))


def print_report(r: dict[str, Any]) -> None:
    n = r["info"]["companies"]
    print("| family | keys per company | bytes per company (after one round of syncs) |")
    print("|---|---|---|")
    total = 0.0
    for name, fam in sorted(r["template"].items(), key=lambda kv: -kv[1]["bytes"]):
        total += fam["bytes"]
        print(f"| {name} | {fam['keys']} | {fam['bytes']:,} |")
    for name, size in r["fleet"].items():
        if name != "changes":
            total += size / n
            print(f"| {name} (fleet-wide, / {n:,}) | - | {size / n:,.0f} |")
    print(f"| **MEMORY USAGE sum** | | **{total:,.0f}** |")
    info = r["info"]
    print(
        f"INFO used_memory per company: copy {info['clone_per_company']:,.0f} + schedule "
        f"{info['rebuild_per_company']:,.0f} = "
        f"{info['clone_per_company'] + info['rebuild_per_company']:,.0f} B; "
        f"whole server {info['used_memory_total'] / 2**20:,.1f} MiB for {n:,} companies"
    )
    for name, sizes in r["caps"].items():
        print(
            f"at cap: {name}: median {median(sizes):,.0f} B (min {min(sizes):,}, "
            f"max {max(sizes):,})"
        )
    print(f"change stream: {r['stream_bytes_per_entry']:,.0f} B per entry")
    for kind, m in r["messages"].items():
        print(
            f"queued {kind} message: {m['json_bytes']:,} B of JSON, "
            f"{m['used_memory_per_message']:,.0f} B used_memory, "
            f"{m['memory_usage_per_message']:,.0f} B MEMORY USAGE"
        )


if __name__ == "__main__":
    main()
