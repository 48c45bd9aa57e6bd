"""Prometheus metrics for what Flower does not show: beat, the due backlog, queue lengths and the
last success and failure per sync kind (Flower's /metrics has no queue lengths, flower#1173, and
no beat view at all, flower#740).

A custom collector reads Redis at scrape time (one pipelined round trip, ``fleet_status``), so the
exporter holds no state, can run anywhere (``erp-sync metrics serve``) and any number of copies
agree. If Redis is unreachable the scrape still succeeds with ``erp_sync_up 0``.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from config.keys import KeySpace
from erp_sync.views.status import fleet_status


class FleetCollector(Collector):
    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("erp_sync_up", "1 if Redis answered this scrape")
        try:
            status = fleet_status(self.client, self.keys)
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        leader = GaugeMetricFamily(
            "erp_sync_beat_leader", "1 while a beat holds the lease", labels=["node"]
        )
        leader.add_metric([status.leader or ""], 1 if status.leader else 0)
        yield leader
        age = GaugeMetricFamily(
            "erp_sync_beat_last_tick_age_seconds",
            "Seconds since each beat's last heartbeat",
            labels=["node", "role"],
        )
        for beat in status.beats:
            age.add_metric([beat.node, beat.role], beat.last_tick_age_s)
        yield age
        yield GaugeMetricFamily(
            "erp_sync_due_backlog",
            "Schedule entries due and not dispatched",
            value=status.due_backlog,
        )
        yield GaugeMetricFamily(
            "erp_sync_schedule_entries", "Entries in the due index", value=status.entries
        )
        yield CounterMetricFamily(
            "erp_sync_dispatched_slots", "Slots dispatched by beat", value=status.dispatched_slots
        )
        yield CounterMetricFamily(
            "erp_sync_dispatched_tasks", "Sync tasks queued by beat", value=status.dispatched_tasks
        )
        yield CounterMetricFamily(
            "erp_sync_applied_changes",
            "Settings changes applied by beat",
            value=status.applied_changes,
        )
        yield CounterMetricFamily(
            "erp_sync_schedule_repairs",
            "Companies whose schedule state the sweep rebuilt from settings",
            value=status.repairs,
        )
        yield CounterMetricFamily(
            "erp_sync_stale_slots_refused",
            "Slots refused because they were not newer than the last sent",
            value=status.stale_slots,
        )
        yield CounterMetricFamily(
            "erp_sync_paused_slots",
            "Slots skipped (advanced, nothing sent) while paused",
            value=status.paused_slots,
        )
        paused = GaugeMetricFamily(
            "erp_sync_paused",
            "1 per pause in force (company '*' is the whole fleet)",
            labels=["company", "by", "until"],
        )
        for company, record in status.paused.items():
            paused.add_metric(
                [company, record.by, record.until.isoformat() if record.until else ""], 1
            )
        yield paused
        queues = GaugeMetricFamily(
            "erp_sync_queue_length", "Messages waiting per Celery queue", labels=["queue"]
        )
        for name, length in status.queues.items():
            queues.add_metric([name], length)
        yield queues
        last = GaugeMetricFamily(
            "erp_sync_last_run_timestamp_seconds",
            "When the latest run of each sync kind finished, by outcome",
            labels=["kind", "status"],
        )
        for kind, runs in status.last_runs.items():
            for outcome, run in runs.items():
                if run and run.finished_at:
                    last.add_metric([kind, outcome], run.finished_at.timestamp())
        yield last


def registry_for(client: redis.Redis, keys: KeySpace) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FleetCollector(client, keys))
    return registry


def render(client: redis.Redis, keys: KeySpace) -> str:
    return generate_latest(registry_for(client, keys)).decode()
