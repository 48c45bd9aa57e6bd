"""Changing and removing what the schedule runs on: companies and projects, as a company admin.

Each change is one optimistic transaction (``SettingsStore._transact``) that re-checks the
actor's admin level, writes, audits and, where beat must re-plan, puts a message on the change
stream, so it is live the same way a settings change is.

Removing a company deletes what drives its schedule (record, settings, projects, users, pause,
opt-outs, alert rules and state) and what beat derived from it (due entries, applied record,
last-slot marks), plus the sync watermarks, in one step. Its run history, audit and security
log stay. Beat's scripts refuse to (re)schedule or dispatch a company that is not in the company
set (``due_apply.lua``, ``due_dispatch.lua``), so neither a change being applied nor a sweep
slice that read the company just before the removal can bring its schedule back; a task queued
before the removal finds the company gone at the worker and is recorded ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from config.members import alert_target, deadline_member, due_member
from config.models import (
    AuditEntry,
    Company,
    Project,
    StoredSettings,
    SyncKind,
    parse,
)
from config.validation import casefold_key, shorten
from erp_sync.control.access import require_admin
from erp_sync.control.inputs import name as valid_name
from erp_sync.control.inputs import timezone as valid_timezone
from erp_sync.control.inputs import user_id
from erp_sync.control.permissions import record_denied
from erp_sync.control.store import SettingsStore
from erp_sync.errors import CorruptRecord, InvalidInput, NotFound, PermissionDenied

PROJECT_KINDS = [k for k in SyncKind if k.project_level]
COMPANY_KINDS = [k for k in SyncKind if not k.project_level]


class Lifecycle:
    """Company and project changes an admin makes after ``company add``."""

    def __init__(self, store: SettingsStore) -> None:
        self.store, self.keys, self.client = store, store.keys, store.client

    def _check_admin(self, pipe: redis.client.Pipeline, company_id: str, actor: str) -> None:
        # Inside the transaction (users hash watched): a demotion racing this write wins.
        require_admin(pipe, self.keys, company_id, actor)

    def _transact(
        self,
        company_id: str,
        actor: str,
        action: str,
        watched: list[str],
        write: Callable[[redis.client.Pipeline], None],
        requested: dict[str, object],
    ) -> None:
        """The store's transaction; a permission refusal lands in the security log."""
        try:
            self.store._transact(watched, write)
        except PermissionDenied:
            record_denied(self.store, company_id, actor, action, requested)
            raise

    def _audit(
        self,
        pipe: redis.client.Pipeline,
        company_id: str,
        actor: str,
        action: str,
        old: dict[str, Any],
        new: dict[str, Any],
    ) -> AuditEntry:
        entry = AuditEntry(
            at=self.store.clock(), actor=actor, action=action, company=company_id, old=old, new=new
        )
        self.store._queue_audit(pipe, entry)
        return entry

    # --- companies --------------------------------------------------------------------------
    def set_company(
        self, company_id: str, actor: str, *, name: str | None = None, timezone: str | None = None
    ) -> tuple[Company, bool]:
        """Rename or re-zone a company; a time-zone change moves its ``daily`` runs live."""
        user_id(actor)
        if name is None and timezone is None:
            raise InvalidInput("nothing to change: give --name or --timezone")
        change: dict[str, str] = {}
        if name is not None:
            change["name"] = valid_name(name)
        if timezone is not None:
            change["timezone"] = valid_timezone(timezone)
        self.store.get_company(company_id)
        key = self.keys.company(company_id)
        result: list[tuple[Company, bool]] = []

        def write(pipe: redis.client.Pipeline) -> None:
            result.clear()
            raw = pipe.get(key)
            if raw is None:
                raise NotFound(f"unknown company {company_id!r}")
            self._check_admin(pipe, company_id, actor)
            current = parse(Company, str(raw), f"company {company_id!r}")
            diff = {k: v for k, v in change.items() if getattr(current, k) != v}
            if not diff:
                result.append((current, False))
                return
            updated = current.model_copy(update=diff)
            version = _version(pipe.get(self.keys.settings(company_id)))
            pipe.multi()
            pipe.set(key, updated.model_dump_json())
            self._audit(
                pipe,
                company_id,
                actor,
                "company.update",
                {k: getattr(current, k) for k in diff},
                diff,
            )
            if "timezone" in diff:  # beat re-plans: a daily cadence's key names its zone
                self.store._queue_change(pipe, company_id, version)
            result.append((updated, True))

        self._transact(
            company_id,
            actor,
            "company.update",
            [key, self.keys.users(company_id)],
            write,
            dict(change),
        )
        return result[-1]

    def remove_company(self, company_id: str, actor: str) -> None:
        """Remove a company: its schedule stops at once; history and audit stay."""
        user_id(actor)
        company = self.store.get_company(company_id)
        watched = [
            self.keys.company(company_id),
            self.keys.users(company_id),
            self.keys.projects(company_id),
        ]

        def write(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(self.keys.company(company_id)):
                raise NotFound(f"unknown company {company_id!r}")
            self._check_admin(pipe, company_id, actor)
            projects = [str(p) for p in pipe.hkeys(self.keys.projects(company_id))]
            members = [due_member(company_id, k) for k in SyncKind]
            pipe.multi()
            pipe.srem(self.keys.companies, company_id)
            pipe.hdel(self.keys.company_folds, casefold_key(company_id))
            pipe.delete(
                self.keys.company(company_id),
                self.keys.settings(company_id),
                self.keys.projects(company_id),
                self.keys.users(company_id),
                self.keys.job_cost_optouts(company_id),
                self.keys.alerts(company_id),
                self.keys.alert_state(company_id),
                *self._watermarks(company_id, projects, company_level=True),
            )
            pipe.hdel(self.keys.paused, company_id)
            pipe.zrem(self.keys.paused_until, company_id)
            pipe.zrem(self.keys.due, *members)
            pipe.hdel(self.keys.beat_slots, *members)
            pipe.hdel(self.keys.beat_applied, company_id)
            deadlines = [deadline_member(company_id, k.value, None) for k in COMPANY_KINDS] + [
                deadline_member(company_id, k.value, p) for k in PROJECT_KINDS for p in projects
            ]
            pipe.zrem(self.keys.alert_deadlines, *deadlines)
            entry = self._audit(
                pipe,
                company_id,
                actor,
                "company.remove",
                {"erp": company.erp.value, "projects": len(projects)},
                {},
            )
            self.store._queue_operator(pipe, entry)
            self.store._queue_change(pipe, company_id, 0)  # beats drop what they still hold

        self._transact(company_id, actor, "company.remove", watched, write, {})

    def _watermarks(
        self, company_id: str, projects: list[str], *, company_level: bool
    ) -> list[str]:
        keys = [self.keys.cursor(company_id, k.value, p) for k in PROJECT_KINDS for p in projects]
        if company_level:
            keys += [self.keys.cursor(company_id, k.value, None) for k in COMPANY_KINDS]
        return keys

    # --- projects ---------------------------------------------------------------------------
    def set_project(
        self, company_id: str, project_id: str, actor: str, *, sync_job_costs: bool | None
    ) -> tuple[Project, bool]:
        """Opt a project in or out of job-cost syncing; beat's next fan-out follows it."""
        user_id(actor)
        if sync_job_costs is None:
            raise InvalidInput("nothing to change: give --sync-job-costs or --no-sync-job-costs")
        self.store.get_company(company_id)
        result: list[tuple[Project, bool]] = []

        def write(pipe: redis.client.Pipeline) -> None:
            result.clear()
            current = self._project(pipe, company_id, project_id)
            self._check_admin(pipe, company_id, actor)
            if current.sync_job_costs == sync_job_costs:
                result.append((current, False))
                return
            updated = current.model_copy(update={"sync_job_costs": sync_job_costs})
            pipe.multi()
            pipe.hset(self.keys.projects(company_id), project_id, updated.model_dump_json())
            optouts = self.keys.job_cost_optouts(company_id)
            if sync_job_costs:
                pipe.srem(optouts, project_id)
            else:
                pipe.sadd(optouts, project_id)
            self._audit(
                pipe,
                company_id,
                actor,
                "project.update",
                {"project": project_id, "sync_job_costs": current.sync_job_costs},
                {"project": project_id, "sync_job_costs": sync_job_costs},
            )
            result.append((updated, True))

        self._transact(
            company_id,
            actor,
            "project.update",
            [self.keys.projects(company_id), self.keys.users(company_id)],
            write,
            {"project": project_id, "sync_job_costs": sync_job_costs},
        )
        return result[-1]

    def remove_project(self, company_id: str, project_id: str, actor: str) -> None:
        """Remove a project from the company's fan-out; its run history stays."""
        user_id(actor)
        self.store.get_company(company_id)

        def write(pipe: redis.client.Pipeline) -> None:
            current = self._project(pipe, company_id, project_id)
            self._check_admin(pipe, company_id, actor)
            pipe.multi()
            pipe.hdel(self.keys.projects(company_id), project_id)
            pipe.srem(self.keys.job_cost_optouts(company_id), project_id)
            pipe.delete(*self._watermarks(company_id, [project_id], company_level=False))
            pipe.hdel(
                self.keys.alert_state(company_id),
                *[alert_target(k.value, project_id) for k in PROJECT_KINDS],
            )
            pipe.zrem(
                self.keys.alert_deadlines,
                *[deadline_member(company_id, k.value, project_id) for k in PROJECT_KINDS],
            )
            self._audit(
                pipe,
                company_id,
                actor,
                "project.remove",
                {"project": project_id, "name": current.name},
                {},
            )

        self._transact(
            company_id,
            actor,
            "project.remove",
            [self.keys.projects(company_id), self.keys.users(company_id)],
            write,
            {"project": project_id},
        )

    def _project(self, pipe: redis.client.Pipeline, company_id: str, project_id: str) -> Project:
        raw = pipe.hget(self.keys.projects(company_id), project_id)
        if raw is None:
            raise NotFound(f"unknown project {shorten(project_id)} in {company_id!r}")
        return parse(Project, str(raw), f"project {project_id!r}")


def _version(raw: object) -> int:
    """The settings version in a raw settings record (0 if unreadable: beat re-reads anyway)."""
    try:
        return parse(StoredSettings, str(raw), "settings").version
    except CorruptRecord:
        return 0
