"""The fleet's health in one read: beats, lease, due backlog, queues, last run per sync kind.

Shared by ``erp-sync status`` and the Prometheus exporter so the two can never disagree. Two
round trips whatever the fleet size (Redis time, then one pipeline; nothing here scans
companies). ``status --json`` prints ``FleetStatus.model_dump(mode="json")``.
"""

from __future__ import annotations

import json
from datetime import datetime

import redis
from pydantic import BaseModel, ConfigDict

from config.keys import KeySpace
from config.members import last_run_field
from config.models import SyncKind
from erp_sync.beat.lease import holder_node
from erp_sync.control.pause import PauseRecord
from erp_sync.infra.slots import COMPANY_QUEUE, PROJECT_QUEUE


class BeatNode(BaseModel):
    """One beat process as its heartbeat shows it."""

    model_config = ConfigDict(frozen=True)

    node: str
    role: str
    pid: int
    last_tick_age_s: float


class LastRun(BaseModel):
    """The fleet's latest finished run of one sync kind with one outcome."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    company: str
    project: str | None = None
    task_id: str
    error: str | None = None
    finished_at: datetime | None = None


class FleetStatus(BaseModel):
    """What ``status`` shows and the metrics export."""

    model_config = ConfigDict(frozen=True)

    leader: str | None
    lease_ttl_ms: int | None
    beats: list[BeatNode]
    due_backlog: int
    entries: int
    dispatched_slots: int
    dispatched_tasks: int
    applied_changes: int
    repairs: int  # schedule state rebuilt from settings by the sweep
    stale_slots: int  # slots the dispatch script refused as not newer than the last one sent
    queues: dict[str, int]
    # kind -> {"succeeded": run or None, "failed": run or None}
    last_runs: dict[str, dict[str, LastRun | None]]
    # company id (or "*", the whole fleet) -> its pause: who, why, since, until
    paused: dict[str, PauseRecord] = {}
    paused_slots: int = 0  # slots advanced without sending because their company was paused


def fleet_status(client: redis.Redis, keys: KeySpace) -> FleetStatus:
    """Everything in one round trip; ages and the backlog are measured on Redis time."""
    seconds, micros = client.time()  # the one clock (heartbeats are written in it too)
    now = seconds + micros / 1_000_000
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.beat_leader)
    pipe.pttl(keys.beat_leader)
    pipe.hgetall(keys.beat_nodes)
    pipe.zcount(keys.due, "-inf", now)
    pipe.zcard(keys.due)
    pipe.hgetall(keys.beat_stats)
    pipe.hgetall(keys.last_runs)
    pipe.hgetall(keys.paused)  # only what is paused: not a scan of the fleet
    for queue in (COMPANY_QUEUE, PROJECT_QUEUE):
        pipe.llen(keys.queue(queue))
    leader, ttl, nodes, backlog, entries, stats, last, paused, q_company, q_project = pipe.execute()
    beats = []
    for node, raw in sorted(nodes.items()):
        beat = json.loads(raw)
        beats.append(
            BeatNode(
                node=node,
                role=beat["role"],
                pid=beat["pid"],
                last_tick_age_s=round(now - float(beat["last_tick"]), 2),
            )
        )
    last_runs = {
        kind.value: {
            status: _last(last.get(last_run_field(status, kind.value)))
            for status in ("succeeded", "failed")
        }
        for kind in SyncKind
    }
    return FleetStatus(
        leader=holder_node(leader),
        lease_ttl_ms=ttl if leader else None,
        beats=beats,
        due_backlog=backlog,
        entries=entries,
        dispatched_slots=int(stats.get("slots", 0)),
        dispatched_tasks=int(stats.get("messages", 0)),
        applied_changes=int(stats.get("applied", 0)),
        repairs=int(stats.get("repairs", 0)),
        stale_slots=int(stats.get("stale_slots", 0)),
        queues={COMPANY_QUEUE: q_company, PROJECT_QUEUE: q_project},
        last_runs=last_runs,
        paused={str(k): PauseRecord.model_validate_json(v) for k, v in paused.items()},
        paused_slots=int(stats.get("paused_slots", 0)),
    )


def _last(raw: str | None) -> LastRun | None:
    return LastRun.model_validate_json(raw) if raw else None
