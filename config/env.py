"""Process configuration from ``ERP_SYNC_*`` environment variables.

Only process configuration lives here (``BaseSettings``); stored state is plain pydantic models in
``config.models``. ``get_settings()`` is cached so nothing reads the environment at import time and
tests can clear the cache after changing the environment.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError

ENV_PREFIX = "ERP_SYNC_"
TEST_PREFIX = "ERP_SYNC_TEST_"


class Settings(BaseSettings):
    """Everything a process needs to know about its deployment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis for settings, schedule, locks, rate limits and the Celery queues: "
        "`redis://`, `rediss://` (TLS), `redis://:password@host`, or "
        "`sentinel://host:port[,host:port]/db?master=NAME`.",
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker URL. Leave unset: beat queues tasks atomically with "
        "its schedule, so it refuses a broker that is not the Redis URL.",
    )
    key_prefix: str = Field(
        "erp_sync", description="Prefix of every Redis key and channel of this deployment."
    )
    seconds_per_hour: float = Field(
        3600.0, gt=0, description="Length of one schedule hour in seconds; demos shrink it."
    )
    beat_lease_seconds: float = Field(
        3.0, gt=0, description="Leader lease TTL; a dead leader is replaced within about this."
    )
    task_soft_time_limit: float = Field(
        600.0, gt=0, description="Soft time limit of one sync (seconds); the sync stops cleanly."
    )
    task_time_limit: float = Field(
        900.0, gt=0, description="Hard time limit of one sync (seconds); the child is killed."
    )
    visibility_timeout: float = Field(
        3600.0,
        gt=0,
        description="Seconds before an unacknowledged sync is redelivered; above the hard limit.",
    )
    defer_after_seconds: float = Field(
        1.0,
        ge=0,
        description="A sync that must wait longer than this for a rate-limit token "
        "gives its worker slot back and is re-queued on its turn instead of sleeping in it "
        "(the ERP's Retry-After and the company's concurrency cap always defer).",
    )
    run_lock_seconds: float = Field(
        10.0,
        gt=0,
        description="TTL of a running sync's lock, renewed by its heartbeat: a "
        "sync whose worker died is rerun by its redelivery this long after it stopped "
        "(at most a quarter of the visibility timeout).",
    )
    change_stream_maxlen: int = Field(
        100_000,
        ge=10,
        description="Changes kept on the change stream; a beat further behind "
        "than this notices the trim and rebuilds every schedule.",
    )
    sweep_seconds: float = Field(
        60.0,
        gt=0,
        description="Time for one full pass of the leader's schedule check over "
        "every company (lost or corrupt schedule state is rebuilt from settings).",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the database the syncs write into (Procore-side "
        "records, run history). Default: an embedded SQLite file, "
        "`$XDG_DATA_HOME/erp-sync/<key prefix>.db` (`~/.local/share/erp-sync/...`). "
        "Production: `postgresql+psycopg://user:password@host/db`.",
    )
    history_days: int = Field(
        90,
        ge=1,
        description="Days of run history kept in the database; older runs are pruned "
        "by a periodic task.",
    )
    settings_wait_seconds: float = Field(
        5.0, ge=0, description="How long `settings set --wait` waits for beat to apply a change."
    )
    alert_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Bound of one alert webhook attempt as a whole, from the connect to the "
        "answer's last byte (redirects are not followed: a 3xx is a failed attempt).",
    )
    alert_attempts: int = Field(
        5, ge=1, le=20, description="Attempts to deliver one alert before it is logged failed."
    )
    alert_retry_seconds: float = Field(
        2.0, gt=0, description="Backoff before an alert's second attempt; doubles each time."
    )
    alert_company_concurrency: int = Field(
        2,
        ge=0,
        le=1000,
        description="Webhook deliveries of one company posted at once across the fleet (0: no "
        "cap); one over it re-queues itself after about a second without spending an attempt, "
        "so one company's slow receivers never hold every alerts worker.",
    )
    alert_stale_check_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the `alerts` queue checks for stale syncs (only "
        "deadlines that passed are read, never every company).",
    )

    outbound_allow: str = Field(
        "",
        description="Hosts, addresses or CIDR ranges (comma separated) that alert webhooks and "
        "ERP URLs may reach although they are internal (loopback, private, link-local, "
        "carrier-grade NAT, metadata). Empty: every internal target is refused, when the rule "
        "or connection is written and again on the address each request connects to. The demo "
        "and tests set `127.0.0.1,::1`; `localhost` names count as loopback.",
    )
    redis_wait_replicas: int = Field(
        1,
        ge=0,
        le=10,
        description="Replicas that must acknowledge an admin change (settings, users, "
        "connections and token rotations, pauses, alert rules) before it is reported done "
        "(Redis `WAIT`; at most the replicas connected, so a lone Redis waits for none). "
        "0: never wait.",
    )
    redis_wait_timeout_ms: int = Field(
        1000,
        ge=1,
        le=60000,
        description="How long an admin change waits for its replica acknowledgements; a change "
        "not acknowledged in time is reported to the admin (non-zero exit), not silently accepted.",
    )
    flower_allow_open: bool = Field(
        False,
        description="Let `celery -A worker flower` start without `FLOWER_BASIC_AUTH` (or another "
        "Flower auth option). Off: it refuses to start open.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Keys that encrypt stored ERP credentials (Fernet keys, comma "
        "separated, newest first: the first encrypts, all decrypt, so a key is rotated by "
        "putting a new one first and running `erp-sync connection rotate-key`). Generate one: "
        "`erp-sync connection new-key`. Required to connect a company to a real ERP.",
    )
    audit_keep: int = Field(
        200,
        ge=1,
        le=2000,
        description="Newest entries of each company's audit and security "
        "logs (and of the operator log) kept in Redis; an hourly task moves older ones to the "
        "database (`audit` and `operator-log` show both). At most 2000, the hard cap Redis "
        "keeps when the task does not run.",
    )

    @field_validator("key_prefix")
    @classmethod
    def _prefix_is_a_key_segment(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*", value):
            raise ValueError("must be letters, digits, '_', '.', '-' (segments joined by ':')")
        return value

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Settings:
        # A visibility timeout below the hard limit would redeliver syncs that are still running.
        if not self.task_soft_time_limit < self.task_time_limit < self.visibility_timeout:
            raise ValueError("need task_soft_time_limit < task_time_limit < visibility_timeout")
        return self

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_database_url(self) -> str:
        """The database URL; one embedded SQLite file per key prefix when none is set."""
        if self.database_url:
            return self.database_url
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        return f"sqlite:///{base / 'erp-sync' / self.key_prefix.replace(':', '_')}.db"


def _reject_unknown_variables() -> None:
    """Fail on a misspelt ``ERP_SYNC_*`` name instead of silently ignoring it.

    ``ERP_SYNC_TEST_*`` belongs to the test suite (``ERP_SYNC_TEST_POSTGRES_URL``), not to a
    process, and is left alone.
    """
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(
        k
        for k in os.environ
        if k.startswith(ENV_PREFIX) and k not in known and not k.startswith(TEST_PREFIX)
    )
    if unknown:
        raise ConfigError(
            f"unknown environment variable {unknown[0]} (known: {', '.join(sorted(known))})"
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process settings, read once from the environment."""
    _reject_unknown_variables()
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else "ERP_SYNC_* limits"
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid {where}: {msg}") from None
