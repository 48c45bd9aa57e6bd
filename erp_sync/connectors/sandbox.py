"""The sandbox ERP connector: the default for every company until a real connector is configured.

It serves the deterministic per-company data of ``sandbox_data`` through the same contract as a
real ERP, including what makes real ERPs hard: per-call latency, random or scripted transient
faults (5xx, rate-limit replies with retry-after, timeouts) and a permanent fault (bad
credentials). Every call is logged with its arrival time under the company's ``erp_calls`` key, so a
test can prove the ERP was never called faster than its rate limit.

Watermarks and cursors are revisions: a page is "records with revision > cursor, in revision
order", so paging is stable while the ERP changes underneath.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import redis

from config.keys import KeySpace
from erp_sync.connectors.base import Connector, Page
from erp_sync.connectors.sandbox_data import (
    SandboxConfig,
    SandboxData,
    collection,
    is_tombstone,
)
from erp_sync.errors import (
    BadCredentials,
    ErpServerError,
    ErpTimeout,
    NotFound,
    RateLimited,
    UnknownErpObject,
)
from erp_sync.infra import lua

CALL_LOG_CAP = 100_000


class SandboxErp(Connector):
    """One company's sandbox ERP, backed by Redis under the deployment prefix."""

    family = "sandbox"

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        company: str,
        rng: random.Random | None = None,
        sleep: bool = True,
    ) -> None:
        self.client, self.keys, self.company = client, keys, company
        self.data = SandboxData(client, keys)
        self.rng = rng or random.Random()
        self.sleep = sleep
        self._read_page = lua.load(client, "sandbox_page")
        self._enter_call = lua.load(client, "sandbox_enter")

    # --- the contract -----------------------------------------------------------------------
    def vendors(self, since: str | None, cursor: str | None) -> Page:
        return self._page("vendors", since, cursor)

    def jobs(self, since: str | None, cursor: str | None) -> Page:
        return self._page("jobs", since, cursor)

    def standard_cost_codes(self, since: str | None, cursor: str | None) -> Page:
        return self._page("cost_codes", since, cursor)

    def project_cost_codes(self, job: str, since: str | None, cursor: str | None) -> Page:
        return self._page(collection("project_cost_codes", job), since, cursor, job)

    def job_costs(self, job: str, since: str | None, cursor: str | None) -> Page:
        return self._page(collection("job_costs", job), since, cursor, job)

    def bill_payments(self, job: str, since: str | None, cursor: str | None) -> Page:
        return self._page(collection("payments", job), since, cursor, job)

    # --- one ERP call -----------------------------------------------------------------------
    def _page(
        self, name: str, since: str | None, cursor: str | None, job: str | None = None
    ) -> Page:
        cfg = self._enter(job)
        after = int(cursor or since or 0)
        flat: list[Any] = self._read_page(
            keys=[self.keys.erp_index(self.company, name), self.keys.erp(self.company, name)],
            args=[after, cfg.page_size],
        )
        revs, raws = flat[0::2], flat[1::2]
        records = [json.loads(r) for r in raws if r]
        last = int(float(revs[-1])) if revs else after
        more = len(revs) == cfg.page_size
        return Page(
            items=[r for r in records if not is_tombstone(r)],
            deleted=[str(r["id"]) for r in records if is_tombstone(r)],
            next_cursor=str(last) if more else None,
            watermark=str(last),
        )

    def _enter(self, job: str | None) -> SandboxConfig:
        """Log the call, seed on first use, then apply latency and any injected fault."""
        meta = self.keys.erp_meta(self.company)
        raw, scripted, seeded, job_known = self._enter_call(
            keys=[meta, self.keys.erp(self.company, "jobs"), self.keys.erp_calls(self.company)],
            args=[job or "-", CALL_LOG_CAP],
        )
        if not seeded:
            self.data.ensure_seeded(self.company)
            raw = self.client.hget(meta, "config")
        if job is not None and not job_known:
            try:
                self.data.ensure_job(self.company, job)
            except NotFound:
                raise UnknownErpObject(f"the ERP of {self.company!r} has no job {job!r}") from None
        cfg = SandboxConfig.model_validate_json(raw) if raw else SandboxConfig()
        if cfg.permanent == "bad_credentials":
            raise BadCredentials(f"the ERP of {self.company!r} rejected the credentials")
        if cfg.latency_ms and self.sleep:
            time.sleep(cfg.latency_ms / 1000)
        if scripted:
            self._fail(cfg, cfg.fail_kind)
        roll = self.rng.random()
        for kind, rate in (
            ("server_error", cfg.transient_rate),
            ("rate_limited", cfg.rate_limited_rate),
            ("timeout", cfg.timeout_rate),
        ):
            if roll < rate:
                self._fail(cfg, kind)
            roll -= rate
        return cfg

    def _fail(self, cfg: SandboxConfig, kind: str) -> None:
        who = f"the ERP of {self.company!r}"
        if kind == "rate_limited":
            raise RateLimited(
                f"{who} replied 429 (retry after {cfg.retry_after:g}s)", retry_after=cfg.retry_after
            )
        if kind == "timeout":
            if self.sleep:
                time.sleep(cfg.timeout_s)
            raise ErpTimeout(f"{who} did not answer within {cfg.timeout_s:g}s")
        if kind == "bad_credentials":
            raise BadCredentials(f"{who} rejected the credentials")
        raise ErpServerError(f"{who} replied 503 Service Unavailable")
