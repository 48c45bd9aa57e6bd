"""Reading a delivery's facts: ``run_facts.lua``'s reply, named, and decoded into ``Facts``.

The script answers with thirteen values in one round trip; ``RunFacts.parse`` is the one place
that knows their order (the script's header names each), so no caller indexes the raw list and
a reply of another shape is refused instead of being read one place off.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import redis

from config.keys import KeySpace
from config.members import NO_PROJECT, limit_field
from config.models import Company, RunRecord, StoredSettings, parse
from erp_sync.errors import WorkerError
from erp_sync.infra import lua
from erp_sync.runs.delivery import Delivery, Facts
from erp_sync.runs.tenant import Tenant
from erp_sync.throttle.ratelimit import effective_limit


@dataclass(frozen=True)
class RunFacts:
    """``run_facts.lua``'s reply, field by field in its order (``None``: the script's ``''``)."""

    executed: bool  # the task id's executed marker is set
    previous: str | None  # this task id's previous run record (RunRecord JSON)
    company: str | None  # the company record (JSON)
    settings: str | None  # the company's settings (JSON)
    project_exists: bool
    erp_override: str | None  # the operators' limit override of the company's ERP (JSON)
    company_override: str | None  # the operators' limit override of this company (JSON)
    watermarks: str | None  # the sync's stored watermarks
    time_seconds: int  # Redis's TIME, seconds
    time_micros: int  # Redis's TIME, microseconds
    paused: str | None  # the company's pause record, else the fleet's (JSON)
    opted_out: bool  # the project is opted out of job costs
    project: str | None  # the project record (JSON)

    @classmethod
    def parse(cls, reply: object) -> RunFacts:
        """The reply, named; ``WorkerError`` when it is not thirteen values of the right kinds."""
        names = [f.name for f in fields(cls)]
        if not isinstance(reply, list) or len(reply) != len(names):
            raise WorkerError(f"run_facts.lua replied {reply!r}: not {len(names)} values")
        v = dict(zip(names, reply, strict=True))  # the fields' order is the reply's
        try:
            return cls(
                executed=_flag("executed", v["executed"]),
                previous=_text("previous", v["previous"]),
                company=_text("company", v["company"]),
                settings=_text("settings", v["settings"]),
                project_exists=_flag("project_exists", v["project_exists"]),
                erp_override=_text("erp_override", v["erp_override"]),
                company_override=_text("company_override", v["company_override"]),
                watermarks=_text("watermarks", v["watermarks"]),
                time_seconds=_number("time_seconds", v["time_seconds"]),
                time_micros=_number("time_micros", v["time_micros"]),
                paused=_text("paused", v["paused"]),
                opted_out=_flag("opted_out", v["opted_out"]),
                project=_text("project", v["project"]),
            )
        except ValueError as exc:
            raise WorkerError(f"run_facts.lua replied {reply!r}: {exc}") from None

    @property
    def redis_time(self) -> float:
        """Redis's clock as read with the facts, in seconds."""
        return self.time_seconds + self.time_micros / 1_000_000


def _flag(name: str, value: object) -> bool:
    if value not in (0, 1) or isinstance(value, bool):
        raise ValueError(f"{name} is {value!r}, not 0 or 1")
    return bool(value)


def _text(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        raise ValueError(f"{name} is {value!r}, not a string")
    return value or None


def _number(name: str, value: object) -> int:
    # TIME's two parts arrive as strings (Redis replies with bulk strings).
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"{name} is {value!r}, not a number")


class FactsReader:
    """Reads everything a delivery's checks need in one round trip (client passed in)."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.keys = keys
        self._script = lua.load(client, "run_facts")

    def read(self, d: Delivery) -> Facts:
        """The facts of ``d``, decoded (a company or settings record that fails validation
        raises ``CorruptRecord``: the run cannot be checked, so it must not run)."""
        return decode(self.fetch(d), d)

    def fetch(self, d: Delivery) -> RunFacts:
        """The script's reply for ``d``, named."""
        k = self.keys
        return RunFacts.parse(
            self._script(
                keys=[
                    k.executed(d.task_id),
                    k.runs(d.company),
                    k.company(d.company),
                    k.settings(d.company),
                    k.projects(d.company),
                    k.rate_limit_overrides,
                    k.cursor(d.company, d.kind.value, d.project),
                    k.paused,
                    k.job_cost_optouts(d.company),
                ],
                args=[d.task_id, d.project or NO_PROJECT, limit_field(d.company), d.company],
            )
        )


def decode(raw: RunFacts, d: Delivery) -> Facts:
    """The records in ``raw`` validated, and the company's effective rate limit."""
    company = parse(Company, raw.company, f"company {d.company!r}") if raw.company else None
    limit = (
        effective_limit(company.erp, raw.erp_override, raw.company_override)
        if company is not None
        else None
    )
    return Facts(
        executed=raw.executed,
        previous=RunRecord.model_validate_json(raw.previous) if raw.previous else None,
        company=company,
        settings=parse(StoredSettings, raw.settings, "settings") if raw.settings else None,
        project_exists=raw.project_exists,
        limit=limit,
        watermarks=raw.watermarks or "",
        redis_time=raw.redis_time,
        paused=raw.paused,
        opted_out=raw.opted_out,
        tenant=Tenant.of(raw.company, d.project, raw.project),
    )
