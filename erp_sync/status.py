"""The fleet's health in one read: beats, lease, due backlog, queues, last run per sync kind.

Shared by ``erp-sync status`` and the Prometheus exporter so the two can never disagree. One
pipelined round trip whatever the fleet size (nothing here scans companies).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.beat.lease import holder_node
from erp_sync.slots import COMPANY_QUEUE, PROJECT_QUEUE


def fleet_status(client: redis.Redis, keys: KeySpace, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.beat_leader)
    pipe.pttl(keys.beat_leader)
    pipe.hgetall(keys.beat_nodes)
    pipe.zcount(keys.due, "-inf", now)
    pipe.zcard(keys.due)
    pipe.hgetall(keys.beat_stats)
    pipe.hgetall(keys.last_runs)
    for queue in (COMPANY_QUEUE, PROJECT_QUEUE):
        pipe.llen(keys.queue(queue))
    leader, ttl, nodes, backlog, entries, stats, last, q_company, q_project = pipe.execute()
    beats = []
    for node, raw in sorted(nodes.items()):
        beat = json.loads(raw)
        beats.append({"node": node, "role": beat["role"], "pid": beat["pid"],
                      "last_tick_age_s": round(now - float(beat["last_tick"]), 2)})
    last_runs: dict[str, dict[str, Any]] = {}
    for kind in SyncKind:
        last_runs[kind.value] = {
            status: json.loads(last[f"{status}:{kind.value}"])
            if f"{status}:{kind.value}" in last else None
            for status in ("succeeded", "failed")
        }
    return {"leader": holder_node(leader),
            "lease_ttl_ms": ttl if leader else None, "beats": beats,
            "due_backlog": backlog, "entries": entries,
            "dispatched_slots": int(stats.get("slots", 0)),
            "dispatched_tasks": int(stats.get("messages", 0)),
            "applied_changes": int(stats.get("applied", 0)),
            "queues": {COMPANY_QUEUE: q_company, PROJECT_QUEUE: q_project},
            "last_runs": last_runs}
