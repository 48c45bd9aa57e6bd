"""The one place that spells Redis key and channel names.

Every name is ``<prefix>:<kind>[:<id>...]`` built from the configurable prefix, so two deployments
(or two tests) share one Redis safely. No other module writes a key string by hand. Beside it:
``config.members`` spells the member and field strings of the fleet-wide keys that name a
company, and ``config.inventory`` says what removing a company does to each per-company key.

Redis Cluster is not a target today: the settings write touches a company's keys *and* the global
change stream in one transaction. A Cluster port would put ``{company}`` hash tags on the
per-company keys and shard the change stream per slot range (see redbeat#296 for the crash that
untagged multi-key scripts cause).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

# Ids no company may have: the last segment of a fleet-wide key whose kind a per-company key
# shares (``runs:last``, ``ratelimit:overrides``, ``alerts:deadlines``). A company with such an id
# would share that key (mixed hashes, WRONGTYPE); tests/test_keys.py derives this set from the
# key space and fails if a new fleet-wide key is missing here.
RESERVED_IDS = frozenset({"last", "overrides", "deadlines"})


@dataclass(frozen=True)
class KeySpace:
    """Key and channel names for one deployment prefix."""

    prefix: str

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # --- settings store -------------------------------------------------------------------
    @property
    def companies(self) -> str:
        """SET of every company id."""
        return self._k("companies")

    def company(self, company: str) -> str:
        """STRING: the company record (JSON)."""
        return self._k("company", company)

    def projects(self, company: str) -> str:
        """HASH project id -> project record (JSON)."""
        return self._k("projects", company)

    def users(self, company: str) -> str:
        """HASH user -> permission level on the company's ERP Integrations tool."""
        return self._k("users", company)

    def settings(self, company: str) -> str:
        """STRING: the versioned sync settings (JSON)."""
        return self._k("settings", company)

    def audit(self, company: str) -> str:
        """LIST of audit entries (JSON), newest first."""
        return self._k("audit", company)

    def denied(self, company: str) -> str:
        """LIST of refused settings changes (JSON audit entries), newest first: the security log."""
        return self._k("denied", company)

    @property
    def company_folds(self) -> str:
        """HASH casefolded company id -> company id: ``ACME`` is refused next to ``acme``."""
        return self._k("companies", "folded")

    def job_cost_optouts(self, company: str) -> str:
        """SET of the company's projects opted out of job-cost syncing (beat's fan-out skips)."""
        return self._k("optout", company, "job_costs")

    @property
    def operator_log(self) -> str:
        """LIST of operator actions no company admin made (company add, fleet pause), newest
        first (JSON audit entries)."""
        return self._k("operator", "log")

    @property
    def paused(self) -> str:
        """HASH company id (or ``*`` for the whole fleet) -> pause record (JSON)."""
        return self._k("paused")

    @property
    def paused_until(self) -> str:
        """ZSET company id (or ``*``) -> when its pause ends by itself (epoch seconds)."""
        return self._k("paused", "until")

    # --- alerts ---------------------------------------------------------------------------
    def alerts(self, company: str) -> str:
        """HASH alert id -> alert rule (JSON: URL, events, threshold, secret)."""
        return self._k("alerts", company)

    def alert_state(self, company: str) -> str:
        """HASH ``kind:project`` -> incident state (JSON: consecutive failures, alerted)."""
        return self._k("alerts", company, "state")

    def alert_log(self, company: str) -> str:
        """LIST of webhook deliveries (JSON), newest first, capped."""
        return self._k("alerts", company, "log")

    @property
    def alert_deadlines(self) -> str:
        """ZSET ``company:kind:project`` -> when that sync turns stale without a success."""
        return self._k("alerts", "deadlines")

    def alert_outbox(self, company: str) -> str:
        """HASH delivery id -> a webhook delivery recorded with its incident and not yet queued
        (JSON: alert id, payload, when): re-sent if the worker died before queueing it."""
        return self._k("alerts", company, "outbox")

    @property
    def alert_outbox_due(self) -> str:
        """ZSET company id -> when its oldest unqueued delivery (``alert_outbox``) is re-sent."""
        return self._k("outbox", "alerts")

    def alert_slots(self, company: str) -> str:
        """ZSET: the company's webhook deliveries being posted, fleet-wide (holder -> lease
        expiry, ms): a per-company cap, so one tenant's slow receivers cannot take every slot
        of the alerts workers."""
        return self._k("alerts", company, "inflight")

    def alert_evaluated(self, task_id: str) -> str:
        """STRING with a TTL: run ``task_id``'s outcome was counted in its incident (evaluating
        the same run again, from its waiting entry or a redelivery, counts nothing)."""
        return self._k("evaluated", "alert", task_id)

    def alert_claim(self, delivery: str) -> str:
        """STRING with a TTL: the task id that posts webhook delivery ``delivery``; a copy of
        the delivery queued again (by the outbox) under another task id posts nothing."""
        return self._k("claim", "alert", delivery)

    @property
    def changes(self) -> str:
        """STREAM of change messages ``{company, version}``; beat resumes from its cursor."""
        return self._k("changes")

    def applied_channel(self, company: str) -> str:
        """Pub/sub channel where beat announces an applied settings version (for --wait)."""
        return self._k("applied", company)

    # --- beat -----------------------------------------------------------------------------
    @property
    def due(self) -> str:
        """ZSET ``company:kind`` -> next due time (epoch seconds); the beat's due index."""
        return self._k("beat", "due")

    @property
    def beat_applied(self) -> str:
        """HASH company -> what beat last applied (JSON: version and each sync's cadence key)."""
        return self._k("beat", "applied")

    @property
    def beat_leader(self) -> str:
        """STRING ``<node>|<epoch>`` with a TTL: the leader lease (``Lease`` owns the format)."""
        return self._k("beat", "leader")

    @property
    def beat_epoch(self) -> str:
        """Counter bumped on every lease acquisition: the fencing token."""
        return self._k("beat", "epoch")

    @property
    def beat_cursor(self) -> str:
        """STRING: the last change-stream id the leader applied."""
        return self._k("beat", "cursor")

    @property
    def beat_nodes(self) -> str:
        """HASH node -> heartbeat (JSON: role, last tick, pid, host)."""
        return self._k("beat", "nodes")

    @property
    def beat_static(self) -> str:
        """HASH name -> last run (epoch seconds) of the app's own ``beat_schedule`` entries."""
        return self._k("beat", "static")

    @property
    def beat_slots(self) -> str:
        """HASH ``company:kind`` -> the last slot time dispatched (slots only ever increase)."""
        return self._k("beat", "slots")

    @property
    def beat_sweep(self) -> str:
        """HASH: the schedule sweep's progress (pass started, checked, repaired, last pass)."""
        return self._k("beat", "sweep")

    @property
    def beat_stats(self) -> str:
        """HASH of counters (dispatched slots, messages, applied changes, repairs, stale slots)."""
        return self._k("beat", "stats")

    # --- broker ---------------------------------------------------------------------------
    @property
    def broker_prefix(self) -> str:
        """kombu ``global_keyprefix``: puts Celery's queues and bindings under our prefix."""
        return self._k("broker") + ":"

    def queue(self, name: str) -> str:
        """The Redis list kombu uses for a Celery queue."""
        return self.broker_prefix + name

    # --- workers --------------------------------------------------------------------------
    def history(self, company: str) -> str:
        """LIST of run ids, newest first, capped."""
        return self._k("history", company)

    def runs(self, company: str) -> str:
        """HASH run id -> run record (JSON)."""
        return self._k("runs", company)

    def run_lock(self, company: str, kind: str, project: str | None) -> str:
        """STRING ``<task id>|<run token>`` with a short TTL that the live run renews."""
        return self._k("lock", company, kind, project or "-")

    def running(self, company: str) -> str:
        """ZSET task id -> heartbeat expiry (ms): the company's syncs running now, fleet-wide."""
        return self._k("running", company)

    def executed(self, task_id: str) -> str:
        """STRING: marks a slot's task id as executed, so a redelivered duplicate runs once."""
        return self._k("executed", task_id)

    def rate_limit(self, company: str) -> str:
        """HASH: the company's ERP token bucket, shared by all workers."""
        return self._k("ratelimit", company)

    def erp(self, company: str, collection: str) -> str:
        """Sandbox ERP data for a company (HASH id -> record JSON)."""
        return self._k("erp", company, collection)

    def erp_meta(self, company: str) -> str:
        """HASH: sandbox ERP configuration for a company (latency, faults, seeded flag)."""
        return self._k("erp", company, "meta")

    def procore(self, company: str, collection: str) -> str:
        """Procore-side store for a company (HASH ERP id -> record JSON)."""
        return self._k("procore", company, collection)

    def cursor(self, company: str, kind: str, project: str | None) -> str:
        """STRING: the incremental-sync watermark for a (company, kind, project)."""
        return self._k("watermark", company, kind, project or "-")

    def erp_index(self, company: str, collection: str) -> str:
        """Sandbox ERP ZSET id -> revision of a collection: the modified-since index pages read."""
        return self._k("erpidx", company, collection)

    def erp_calls(self, company: str) -> str:
        """Sandbox ERP LIST of call timestamps (epoch seconds), newest first, capped."""
        return self._k("erpcalls", company)

    @property
    def rate_limit_overrides(self) -> str:
        """HASH ERP key -> ``{"rate", "burst"}`` (JSON) overriding the default ERP rate limits."""
        return self._k("ratelimit", "overrides")

    def connection(self, company: str) -> str:
        """HASH: a company's ERP connection (``meta`` JSON, ``secret`` sealed, ``generation``)."""
        return self._k("connection", company)

    @property
    def connection_generations(self) -> str:
        """STRING: the fleet's connection generation counter. Every write of a connection's
        secrets takes its next number, so no generation is ever given twice, not even to a
        company removed and added again: a compare-and-set on one never matches a newer one."""
        return self._k("connections", "generation")

    def access_token(self, company: str) -> str:
        """STRING: a company's cached ERP access token (encrypted), expiring before it does."""
        return self._k("connection", company, "access")

    def token_refresh_lock(self, company: str) -> str:
        """STRING: held by the one worker refreshing a company's ERP access token."""
        return self._k("connection", company, "refreshing")

    def mirror_lock(self, company: str) -> str:
        """STRING: held by the one worker refreshing a company's ERP mirror (erp_lines)."""
        return self._k("connection", company, "mirroring")

    def mirror_seen(self, company: str) -> str:
        """SET ``entity:id`` of what a full re-read of the ERP mirror has read so far (24 h TTL)."""
        return self._k("connection", company, "mirroring", "seen")

    def request_slots(self, company: str) -> str:
        """ZSET: the ERP requests of a company in flight, fleet-wide (member -> lease expiry)."""
        return self._k("ratelimit", company, "inflight")

    @property
    def last_runs(self) -> str:
        """HASH ``<status>:<kind>`` -> the fleet's latest finished run of that kind (JSON)."""
        return self._k("runs", "last")

    @property
    def runs_outbox(self) -> str:
        """HASH task id -> a final run record (JSON) the database has not taken yet (it was
        down or full when the run ended); written to the history when it accepts writes."""
        return self._k("outbox", "runs")

    @property
    def removed(self) -> str:
        """HASH company id -> removal record (JSON: when, by whom): what ``history`` and
        ``audit`` of a removed company say; ``company add`` of the same id clears it."""
        return self._k("removed")

    @property
    def config_revs(self) -> str:
        """HASH company id (``*``: the fleet) -> revision of its configuration: microseconds of
        Redis time, at least one more than the last, bumped by every admin change; the
        database's copy (``erp_sync/db/config_copy.py``) keeps only the newest revision."""
        return self._k("config", "revs")

    @property
    def config_dirty(self) -> str:
        """HASH company id (``*``) -> a revision changed in Redis and not yet copied to the
        database; the copy removes the field once it holds that revision."""
        return self._k("config", "dirty")

    @property
    def config_floor(self) -> str:
        """STRING: a revision every bump goes above (``restore-from-db`` raises it to the
        database copy's highest), so a Redis rebuilt after a loss, whose clock may be behind the
        lost one's, still gives revisions newer than anything in the copy."""
        return self._k("config", "floor")

    # --- scan patterns ----------------------------------------------------------------------
    def pattern(self, kind: str) -> str:
        """A SCAN pattern for every key of ``kind`` (``procore``, ``runs``, ``connection``)."""
        return self._k(kind, "*")

    def company_of(self, kind: str, key: str) -> str | None:
        """The company of a ``<prefix>:<kind>:<company>`` key, or None for any other key of the
        kind (a longer per-company key, or a fleet-wide one such as ``runs:last``). A company
        stored under a reserved id before ids were reserved still has its keys found."""
        parts = key.split(":")
        head = self._k(kind).split(":")
        if len(parts) != len(head) + 1 or parts[: len(head)] != head:
            return None
        return None if key in _fleet_keys(self) else parts[-1]

    def segments(self, kind: str, key: str) -> list[str] | None:
        """The segments of a ``<prefix>:<kind>:...`` key after its kind, or None if it is not
        one (``procore:acme:job_costs:p1`` -> ``["acme", "job_costs", "p1"]``)."""
        head = self._k(kind) + ":"
        return key.removeprefix(head).split(":") if key.startswith(head) else None


@cache
def _fleet_keys(keys: KeySpace) -> frozenset[str]:
    """Every fleet-wide key of ``keys`` (its properties), worked out once per key space: what a
    scan of a kind must not take for a company's key (``runs:last`` is no company's records)."""
    return frozenset(
        getattr(keys, name) for name, v in vars(KeySpace).items() if isinstance(v, property)
    )
