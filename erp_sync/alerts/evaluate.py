"""Turning run outcomes into alerts, one per incident, and noticing syncs that went stale.

``on_run`` is called by the task layer after the runner returns a final record (never from beat):
a failure counts up the (kind, project)'s failures in a row and alerts each rule exactly when the
count reaches the rule's threshold, so one incident alerts once; the first success afterwards
sends ``recovered`` to the rules that were alerted, and resets the count.

Staleness needs no scan of the fleet: each watched sync has a deadline in one sorted set
(``<prefix>:alerts:deadlines``), moved to "now + two periods" by every success and set (if
missing) by a failure or by adding a rule. ``check_stale`` (a periodic task on the ``alerts``
queue) reads only the deadlines that have passed. A paused company's deadline is pushed on; a
sync switched off, unsupported, opted out or removed is forgotten.

Deliveries are at least once: the incident and each delivery it calls for (payload and delivery
id) are written in one MULTI, the deliveries into the company's outbox; each is queued after,
then taken out; a worker that dies in between leaves it there, and ``resend_pending`` (run by
the periodic stale check) queues it again (``erp_sync.alerts.outbox``). The incident is written
only while the run's company (and project) is still the tenant the run started for
(``RunOutcome.company_stamp``): a sync that ends after its company was removed leaves no alert
state to a company added later under the id.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from config.alerts import AlertEvent, AlertRule, Incident
from config.keys import KeySpace
from config.members import alert_target, deadline_member, split_deadline
from config.models import (
    CAPABILITIES,
    Company,
    Project,
    StoredSettings,
    SyncKind,
    parse,
    tenant_stamp,
)
from erp_sync.alerts.outbox import AlertOutbox, Send
from erp_sync.errors import CorruptRecord, ErpSyncError
from erp_sync.schedule.cadence import cadence_for

# The delivery message's field with the company's stamp (``erp_sync.alerts.deliver``).
TENANT_FIELD = "tenant"
# A run's "counted" marker outlives every evaluation of it: the periodic check evaluates a
# waiting outcome within minutes, a redelivery arrives within two visibility timeouts.
EVALUATED_TTL = 86_400
log = logging.getLogger("erp_sync.alerts")


@dataclass(frozen=True)
class RunOutcome:
    """What the evaluator needs of a finished run (not the run record: history owns that)."""

    company: str
    kind: str
    project: str | None
    status: str
    error: str | None
    slot: str
    # The company's (and project's) ``created_at`` as the run found them: the incident is
    # written only while they are unchanged ('': not checked). erp_sync.runs.tenant.Tenant.
    company_stamp: str = ""
    project_stamp: str = ""
    # The run's task id: its outcome is counted once however often it is evaluated, and its
    # waiting entry in the outbox (run_finish.lua) is taken out ('': neither).
    task_id: str = ""


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1_000_000


def payload(
    rule: AlertRule,
    event: AlertEvent,
    outcome: RunOutcome,
    now: float,
    failures: int = 0,
    tenant: str = "",
) -> dict[str, Any]:
    """The webhook's JSON body: what happened, to which sync, and a link-free summary; with
    ``tenant`` (the company's stamp), the delivery task's message also carries it
    (``TENANT_FIELD``, left out of the POSTed body)."""
    where = outcome.company + (f" project {outcome.project}" if outcome.project else "")
    summary = {
        AlertEvent.FAILED: f"{outcome.kind} sync of {where} failed"
        + (f" {failures} times in a row" if failures > 1 else ""),
        AlertEvent.STALE: f"{outcome.kind} sync of {where} has not succeeded for two periods",
        AlertEvent.RECOVERED: f"{outcome.kind} sync of {where} succeeded again",
        AlertEvent.TEST: f"test alert for {outcome.company}",
    }[event]
    body = {
        "event": event.value,
        "alert": rule.id,
        "delivery": secrets.token_hex(8),
        "company": outcome.company,
        "kind": outcome.kind,
        "project": outcome.project,
        "slot": outcome.slot,
        "status": outcome.status,
        "error": (outcome.error or "")[:500] or None,
        "time": datetime.fromtimestamp(now, UTC).isoformat(),
        "summary": summary,
    }
    if tenant:
        body[TENANT_FIELD] = tenant
    return body


class Evaluator:
    """Reads a company's rules and incident state; sends through ``send`` (the alerts queue)."""

    def __init__(
        self, client: redis.Redis, keys: KeySpace, seconds_per_hour: float, send: Send
    ) -> None:
        self.client, self.keys, self.send = client, keys, send
        self.outbox = AlertOutbox(client, keys)
        self.seconds_per_hour = seconds_per_hour

    def rules(self, company: str) -> list[AlertRule]:
        raw = self.client.hgetall(self.keys.alerts(company))
        return [parse(AlertRule, str(v), "alert rule") for v in raw.values()]

    def on_run(self, outcome: RunOutcome) -> list[AlertEvent]:
        """Update the incident of a finished run; send what it calls for (once per incident).
        A run with a task id is counted once: its marker (``alert_evaluated``) is set and its
        waiting entry taken out in the incident's MULTI, and a second evaluation of it finds
        the marker and counts nothing."""
        if outcome.status not in ("succeeded", "failed"):
            self._taken(outcome)
            return []
        rules = self.rules(outcome.company)
        if not rules:
            self._taken(outcome)
            return []
        now = redis_now(self.client)
        key, field = (
            self.keys.alert_state(outcome.company),
            alert_target(outcome.kind, outcome.project),
        )
        member = deadline_member(outcome.company, outcome.kind, outcome.project)
        period = self._period(outcome.company, SyncKind(outcome.kind))
        sends: list[tuple[AlertRule, AlertEvent, dict[str, Any]]] = []
        watched = [key, self.keys.company(outcome.company), self.keys.projects(outcome.company)]
        marker = self.keys.alert_evaluated(outcome.task_id) if outcome.task_id else None
        if marker:
            watched.append(marker)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watched)  # type: ignore[no-untyped-call]
                    if not _same_tenant(pipe, self.keys, outcome) or (
                        marker and pipe.exists(marker)
                    ):
                        # Removed while it ran, or counted already (leaving the block unwatches).
                        self._taken(outcome)
                        return []
                    tenant = tenant_stamp(pipe.get(self.keys.company(outcome.company)))
                    raw = pipe.hget(key, field)
                    incident = Incident() if raw is None else parse(Incident, str(raw), "incident")
                    sends.clear()
                    if outcome.status == "failed":
                        incident.failures += 1
                        sends += [
                            (
                                r,
                                AlertEvent.FAILED,
                                payload(
                                    r,
                                    AlertEvent.FAILED,
                                    outcome,
                                    now,
                                    incident.failures,
                                    tenant,
                                ),
                            )
                            for r in rules
                            if AlertEvent.FAILED in r.events and incident.failures == r.failures
                        ]
                    else:
                        sends += [
                            (
                                r,
                                AlertEvent.RECOVERED,
                                payload(r, AlertEvent.RECOVERED, outcome, now, tenant=tenant),
                            )
                            for r in rules
                            if AlertEvent.RECOVERED in r.events
                            and (
                                (AlertEvent.FAILED in r.events and incident.failures >= r.failures)
                                or (AlertEvent.STALE in r.events and incident.stale)
                            )
                        ]
                    pipe.multi()
                    if outcome.status == "failed":
                        pipe.hset(key, field, incident.model_dump_json())
                        if period is not None:
                            pipe.zadd(
                                self.keys.alert_deadlines, {member: now + 2 * period}, nx=True
                            )
                    else:
                        pipe.hdel(key, field)
                        if period is not None:
                            pipe.zadd(self.keys.alert_deadlines, {member: now + 2 * period})
                    self.outbox.stage(pipe, outcome.company, [(r, m) for r, _, m in sends], now)
                    if marker:
                        pipe.set(marker, "1", ex=EVALUATED_TTL)
                        self.outbox.evaluated(pipe, outcome.company, outcome.task_id)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.outbox.send(self.send, outcome.company, [(r, m) for r, _, m in sends])
        return [event for _, event, _ in sends]

    def _taken(self, outcome: RunOutcome) -> None:
        """The run's waiting entry is done with (nothing to count, or counted already)."""
        if outcome.task_id:
            self.outbox.taken(outcome.company, outcome.task_id)

    def evaluate_waiting(self, run: dict[str, Any]) -> list[AlertEvent]:
        """Evaluate a run outcome that waited in the outbox (``run_finish.lua`` wrote it); a
        failure is logged and leaves it waiting for the next periodic check; an entry that is
        not an outcome can never be evaluated and is dropped."""
        try:
            outcome = RunOutcome(
                company=str(run["company"]),
                kind=str(SyncKind(run["kind"]).value),
                project=str(run["project"]) if run.get("project") else None,
                status=str(run["status"]),
                error=str(run["error"]) if run.get("error") else None,
                slot=str(run.get("slot") or ""),
                company_stamp=str(run.get("company_stamp") or ""),
                project_stamp=str(run.get("project_stamp") or ""),
                task_id=str(run["task_id"]),
            )
        except (KeyError, TypeError, ValueError):
            log.error("dropping an unreadable waiting run outcome task_id=%s", run.get("task_id"))
            if run.get("company") and run.get("task_id"):
                self.outbox.taken(str(run["company"]), str(run["task_id"]))
            return []
        try:
            return self.on_run(outcome)
        except (redis.RedisError, ErpSyncError, ValueError) as exc:
            log.warning(
                "alert evaluation of task_id=%s waits for the next check: %s", outcome.task_id, exc
            )
            return []

    def evaluate_pending(self, company: str, task_id: str) -> list[AlertEvent]:
        """Evaluate run ``task_id``'s outcome now if it still waits (a redelivered duplicate of
        a run whose worker died before evaluating it)."""
        run = self.outbox.pending(company, task_id)
        return [] if run is None else self.evaluate_waiting(run)

    def resend_pending(self, now: float | None = None, limit: int = 100) -> int:
        """Queue again the deliveries whose sender died after recording them (the outbox), and
        evaluate the run outcomes whose worker died before evaluating them."""
        return self.outbox.resend(
            self.send,
            redis_now(self.client) if now is None else now,
            limit,
            evaluate=self.evaluate_waiting,
        )

    def check_stale(self, now: float | None = None, limit: int = 500) -> list[str]:
        """Alert the syncs whose deadline passed (only those: a range read of one sorted set)."""
        now = redis_now(self.client) if now is None else now
        due = [
            str(m)
            for m in self.client.zrangebyscore(
                self.keys.alert_deadlines, "-inf", now, start=0, num=limit
            )
        ]
        stale = []
        for member in due:
            try:
                company, kind, project = split_deadline(member)
            except ValueError:
                self.client.zrem(self.keys.alert_deadlines, member)
                continue
            watch = self._watchable(company, kind, project)
            if watch == "paused":
                period = self._period(company, kind) or 0.0
                self.client.zadd(self.keys.alert_deadlines, {member: now + 2 * period})
                continue
            self.client.zrem(self.keys.alert_deadlines, member)
            if watch != "yes":
                continue
            rules = [r for r in self.rules(company) if AlertEvent.STALE in r.events]
            field = alert_target(kind.value, project)
            raw = self.client.hget(self.keys.alert_state(company), field)
            incident = Incident() if raw is None else parse(Incident, str(raw), "incident")
            if incident.stale or not rules:
                continue  # already alerted for this incident
            incident.stale = True
            outcome = RunOutcome(company, kind.value, project, "stale", None, "")
            tenant = tenant_stamp(self.client.get(self.keys.company(company)))
            messages = [
                (r, payload(r, AlertEvent.STALE, outcome, now, tenant=tenant)) for r in rules
            ]
            with self.client.pipeline() as pipe:  # the incident and its deliveries, together
                pipe.hset(self.keys.alert_state(company), field, incident.model_dump_json())
                self.outbox.stage(pipe, company, messages, now)
                pipe.execute()
            self.outbox.send(self.send, company, messages)
            stale.append(member)
        return stale

    def seed_deadlines(self, company: str) -> int:
        """A deadline for each enabled sync of ``company`` that has none (rule added)."""
        now = redis_now(self.client)
        found = self._load(company)
        if found is None:
            return 0
        record, settings, projects = found
        members: dict[str, float] = {}
        for kind in settings.settings.enabled_kinds() & CAPABILITIES[record.erp]:
            period = self._period(company, kind)
            if period is None:
                continue
            targets: Sequence[str | None] = (
                [p.id for p in projects if kind is not SyncKind.JOB_COSTS or p.sync_job_costs]
                if kind.project_level
                else [None]
            )
            members.update(
                {deadline_member(company, kind.value, p): now + 2 * period for p in targets}
            )
        if members:
            self.client.zadd(self.keys.alert_deadlines, members, nx=True)
        return len(members)

    # --- reads ------------------------------------------------------------------------------
    def _load(self, company: str) -> tuple[Company, StoredSettings, list[Project]] | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.company(company))
        pipe.get(self.keys.settings(company))
        pipe.hgetall(self.keys.projects(company))
        raw_company, raw_settings, raw_projects = pipe.execute()
        if raw_company is None or raw_settings is None:
            return None
        try:
            return (
                parse(Company, raw_company, "company"),
                parse(StoredSettings, raw_settings, "settings"),
                [parse(Project, v, "project") for v in raw_projects.values()],
            )
        except CorruptRecord:
            return None

    def _period(self, company: str, kind: SyncKind) -> float | None:
        found = self._load(company)
        if found is None:
            return None
        record, settings, _ = found
        cadence = cadence_for(kind, settings.settings, record.timezone, self.seconds_per_hour)
        return None if cadence is None else cadence.period

    def _watchable(self, company: str, kind: SyncKind, project: str | None) -> str:
        """``yes``, ``paused`` (look again later) or why it is no longer watched."""
        found = self._load(company)
        if found is None:
            return "company gone"
        record, settings, projects = found
        if kind not in settings.settings.enabled_kinds() or kind not in CAPABILITIES[record.erp]:
            return "switched off"
        if project is not None:
            match = [p for p in projects if p.id == project]
            if not match or (kind is SyncKind.JOB_COSTS and not match[0].sync_job_costs):
                return "project gone or opted out"
        if self.client.hexists(self.keys.paused, company) or self.client.hexists(
            self.keys.paused, "*"
        ):
            return "paused"
        return "yes"


def _same_tenant(pipe: redis.client.Pipeline, keys: KeySpace, outcome: RunOutcome) -> bool:
    """Whether the run's company (and project) records are still the ones it started for
    (read under the caller's WATCH of both keys, so a removal after this read fails the
    MULTI). A run that gave no stamps is not checked."""
    if not outcome.company_stamp:
        return True
    if tenant_stamp(pipe.get(keys.company(outcome.company))) != outcome.company_stamp:
        return False
    if outcome.project is None or not outcome.project_stamp:
        return True
    found = pipe.hget(keys.projects(outcome.company), outcome.project)
    return tenant_stamp(found) == outcome.project_stamp
