"""Changing and removing what the schedule runs on: companies and projects, as a company admin.

Each change is one unit of work (``erp_sync.control.unit``) that re-checks the actor's admin
level, writes, audits and, where beat must re-plan, puts a message on the change stream, so it
is live the same way a settings change is.

Removing a company deletes, in one step, every key the key space's inventory marks deleted
(``config.inventory``: what drives its schedule, what beat derived from it, its watermarks, its
ERP connection and cached token, its alert rules, state and delivery log, its rate-limit
override), so a company added later under the same id starts afresh. Its audit, security log
and run records stay, and a removal record says when and by whom it went. Beat's scripts
refuse to (re)schedule or dispatch a company that is not in the company set (``due_apply.lua``,
``due_dispatch.lua``), so neither a change being applied nor a sweep slice that read the
company just before the removal can bring its schedule back; a task queued before the removal
finds the company gone at the worker and is recorded ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis

from config.inventory import removal
from config.members import alert_target, deadline_member
from config.models import (
    Company,
    Project,
    Removed,
    StoredSettings,
    SyncKind,
    parse,
)
from config.validation import shorten
from erp_sync.control.inputs import name as valid_name
from erp_sync.control.inputs import timezone as valid_timezone
from erp_sync.control.inputs import user_id
from erp_sync.control.store import SettingsStore
from erp_sync.control.unit import Denied, UnitOfWork
from erp_sync.errors import CorruptRecord, InvalidInput, NotFound

PROJECT_KINDS = [k for k in SyncKind if k.project_level]
T = TypeVar("T")


class Lifecycle:
    """Company and project changes an admin makes after ``company add``."""

    def __init__(self, store: SettingsStore) -> None:
        self.store, self.keys, self.client = store, store.keys, store.client

    def _transact(
        self,
        company_id: str,
        actor: str,
        action: str,
        watched: list[str],
        write: Callable[[UnitOfWork], T],
        requested: dict[str, object],
    ) -> T:
        """The store's unit of work; a permission refusal lands in the security log."""
        return self.store.transact(watched, write, Denied(company_id, actor, action, requested))

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

        def write(work: UnitOfWork) -> tuple[Company, bool]:
            pipe = work.pipe
            raw = pipe.get(key)
            if raw is None:
                raise NotFound(f"unknown company {company_id!r}")
            work.require_admin(company_id, actor)
            current = parse(Company, str(raw), f"company {company_id!r}")
            diff = {k: v for k, v in change.items() if getattr(current, k) != v}
            if not diff:
                return current, False
            updated = current.model_copy(update=diff)
            version = _version(pipe.get(self.keys.settings(company_id)))
            work.begin()
            pipe.set(key, updated.model_dump_json())
            work.audited(
                company_id,
                actor,
                "company.update",
                {k: getattr(current, k) for k in diff},
                diff,
            )
            if "timezone" in diff:  # beat re-plans: a daily cadence's key names its zone
                work.change(company_id, version)
            return updated, True

        return self._transact(
            company_id,
            actor,
            "company.update",
            [key, self.keys.users(company_id)],
            write,
            dict(change),
        )

    def remove_company(self, company_id: str, actor: str) -> None:
        """Remove a company: its schedule stops at once; history and audit stay."""
        user_id(actor)
        company = self.store.get_company(company_id)
        watched = [
            self.keys.company(company_id),
            self.keys.users(company_id),
            self.keys.projects(company_id),
        ]

        def write(work: UnitOfWork) -> None:
            pipe = work.pipe  # the store's transaction found the company still there
            work.require_admin(company_id, actor)
            projects = [str(p) for p in pipe.hkeys(self.keys.projects(company_id))]
            gone = removal(self.keys, company_id, projects)
            work.begin()
            pipe.delete(*gone.delete)
            for key, members in gone.srem.items():
                pipe.srem(key, *members)
            for key, fields in gone.hdel.items():
                pipe.hdel(key, *fields)
            for key, members in gone.zrem.items():
                pipe.zrem(key, *members)
            at = self.store.clock()
            pipe.hset(
                self.keys.removed,
                company_id,
                Removed(company=company_id, at=at, by=actor, erp=company.erp).model_dump_json(),
            )
            entry = work.audited(
                company_id,
                actor,
                "company.remove",
                {"erp": company.erp.value, "projects": len(projects)},
                {},
            )
            work.operator(entry)
            work.change(company_id, 0)  # beats drop what they still hold

        self._transact(company_id, actor, "company.remove", watched, write, {})

    # --- projects ---------------------------------------------------------------------------
    def set_project(
        self, company_id: str, project_id: str, actor: str, *, sync_job_costs: bool | None
    ) -> tuple[Project, bool]:
        """Opt a project in or out of job-cost syncing; beat's next fan-out follows it."""
        user_id(actor)
        if sync_job_costs is None:
            raise InvalidInput("nothing to change: give --sync-job-costs or --no-sync-job-costs")
        self.store.get_company(company_id)

        def write(work: UnitOfWork) -> tuple[Project, bool]:
            pipe = work.pipe
            current = self._project(pipe, company_id, project_id)
            work.require_admin(company_id, actor)
            if current.sync_job_costs == sync_job_costs:
                return current, False
            updated = current.model_copy(update={"sync_job_costs": sync_job_costs})
            work.begin()
            pipe.hset(self.keys.projects(company_id), project_id, updated.model_dump_json())
            optouts = self.keys.job_cost_optouts(company_id)
            if sync_job_costs:
                pipe.srem(optouts, project_id)
            else:
                pipe.sadd(optouts, project_id)
            work.audited(
                company_id,
                actor,
                "project.update",
                {"project": project_id, "sync_job_costs": current.sync_job_costs},
                {"project": project_id, "sync_job_costs": sync_job_costs},
            )
            return updated, True

        return self._transact(
            company_id,
            actor,
            "project.update",
            [self.keys.projects(company_id), self.keys.users(company_id)],
            write,
            {"project": project_id, "sync_job_costs": sync_job_costs},
        )

    def remove_project(self, company_id: str, project_id: str, actor: str) -> None:
        """Remove a project from the company's fan-out; its run history stays."""
        user_id(actor)
        self.store.get_company(company_id)

        def write(work: UnitOfWork) -> None:
            pipe = work.pipe
            current = self._project(pipe, company_id, project_id)
            work.require_admin(company_id, actor)
            work.begin()
            pipe.hdel(self.keys.projects(company_id), project_id)
            pipe.srem(self.keys.job_cost_optouts(company_id), project_id)
            pipe.delete(*[self.keys.cursor(company_id, k.value, project_id) for k in PROJECT_KINDS])
            pipe.hdel(
                self.keys.alert_state(company_id),
                *[alert_target(k.value, project_id) for k in PROJECT_KINDS],
            )
            pipe.zrem(
                self.keys.alert_deadlines,
                *[deadline_member(company_id, k.value, project_id) for k in PROJECT_KINDS],
            )
            work.audited(
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
