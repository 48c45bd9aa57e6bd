"""One fake company ("realm"): its data, OAuth state, throttles, switches, clock and counters.

Switches (set through ``POST /_admin/realms/{id}/switches``, all optional, unknown keys refused):

``latency_ms``            added to every API request, inside its concurrency slot
``fail_next``             ``{"count": N, "mode": M}``: the next N API requests that pass the
                          throttles and auth fail; M is ``500`` (JSON SystemFault), ``503`` (an
                          HTML page), ``malformed`` (200, a JSON body cut in half), ``fault200``
                          (200 with a SystemFault body) or ``429`` (ThrottleExceeded with
                          ``Retry-After: retry_after``, default 1); modes queue in order
``clear_failures``        forget queued failures
``revoke_refresh_token``  every refresh is ``invalid_grant`` until ``set_refresh_token``
``set_refresh_token``     a reconnect: this refresh token is the live one
``expire_access_tokens``  every access token issued so far is expired now
``access_token_ttl``      seconds for access tokens issued from now on
``limits``                ``{"rate_per_minute", "concurrency", "cdc_max_objects"}``

The clock: a realm's "now" is real time plus an offset the admin API can move forward (data
times, CDC's 30-day window and ``time`` fields follow it; token expiry does not).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from . import seed
from .limits import Limits
from .oauth import Tokens
from .store import Store

JsonObject = dict[str, Any]
FAILURE_MODES = ("500", "503", "malformed", "fault200", "429")
SWITCHES = (
    "latency_ms",
    "fail_next",
    "clear_failures",
    "revoke_refresh_token",
    "set_refresh_token",
    "expire_access_tokens",
    "access_token_ttl",
    "limits",
)


@dataclass
class Realm:
    realm_id: str
    tokens: Tokens
    store: Store = field(default_factory=Store)
    limits: Limits = field(default_factory=Limits)
    clock_offset: float = 0.0
    latency_ms: float = 0.0
    failures: deque[str] = field(default_factory=deque)
    failure_retry_after: int = 1
    cdc_max_objects: int = 1000
    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def next_failure(self) -> tuple[str, int] | None:
        with self.lock:
            if not self.failures:
                return None
            self.counts["injected_failures"] += 1
            return self.failures.popleft(), self.failure_retry_after

    @classmethod
    def create(cls, data: JsonObject) -> Realm:
        """A realm from ``POST /_admin/realms`` (``ValueError`` for a bad request)."""
        for key in ("realm_id", "client_id", "client_secret", "refresh_token"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"{key} is required (a non-empty string)")
        unknown = sorted(
            set(data)
            - {
                "realm_id",
                "client_id",
                "client_secret",
                "refresh_token",
                "access_token_ttl",
                "seed",
            }
        )
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(unknown)}")
        tokens = Tokens(
            data["client_id"],
            data["client_secret"],
            data["refresh_token"],
            float(data.get("access_token_ttl", 3600)),
        )
        realm = cls(data["realm_id"], tokens)
        spec = seed.SeedSpec.from_json(data.get("seed") or {})
        seed.seed(realm.store, spec, realm.realm_id, int(realm.now()))
        return realm

    def switch(self, data: JsonObject) -> JsonObject:
        """Apply switches (module docstring); answers the switch state now."""
        unknown = sorted(set(data) - set(SWITCHES))
        if unknown:
            raise ValueError(f"unknown switches: {', '.join(unknown)}")
        with self.lock:
            if "latency_ms" in data:
                self.latency_ms = max(0.0, float(data["latency_ms"]))
            if data.get("clear_failures"):
                self.failures.clear()
            if "fail_next" in data:
                spec = data["fail_next"]
                mode, count = str(spec.get("mode")), int(spec.get("count", 1))
                if mode not in FAILURE_MODES:
                    raise ValueError(f"fail_next.mode must be one of {', '.join(FAILURE_MODES)}")
                self.failures.extend([mode] * count)
                self.failure_retry_after = int(spec.get("retry_after", 1))
            if "access_token_ttl" in data:
                self.tokens.access_token_ttl = float(data["access_token_ttl"])
            if "limits" in data:
                limits = dict(data["limits"])
                self.limits.set(
                    limits.pop("rate_per_minute", None), limits.pop("concurrency", None)
                )
                self.cdc_max_objects = int(limits.pop("cdc_max_objects", self.cdc_max_objects))
                if limits:
                    raise ValueError(f"unknown limits: {', '.join(sorted(limits))}")
        if data.get("revoke_refresh_token"):
            self.tokens.revoke()
        if "set_refresh_token" in data:
            self.tokens.replace(str(data["set_refresh_token"]))
        if data.get("expire_access_tokens"):
            self.tokens.expire_all()
        return self.switch_state()

    def switch_state(self) -> JsonObject:
        with self.lock:
            return {
                "latency_ms": self.latency_ms,
                "pending_failures": list(self.failures),
                "access_token_ttl": self.tokens.access_token_ttl,
                "refresh_token_live": self.tokens.refresh_token is not None,
                "limits": {
                    "rate_per_minute": self.limits.rate_per_minute,
                    "concurrency": self.limits.concurrency,
                    "cdc_max_objects": self.cdc_max_objects,
                },
            }

    def stats(self) -> JsonObject:
        """The counters a test asserts on (``GET /_admin/realms/{id}/stats``)."""
        with self.lock, self.limits.lock:
            lim = self.limits
            return {
                **{
                    k: self.counts.get(k, 0)
                    for k in (
                        "requests",
                        "queries",
                        "cdc",
                        "ok",
                        "unauthorized",
                        "forbidden",
                        "bad_requests",
                        "injected_failures",
                        "token_requests",
                    )
                },
                "refreshes": self.tokens.refreshes,
                "refresh_failures": self.tokens.refresh_failures,
                "throttled": lim.throttled_rate + lim.throttled_concurrency,
                "throttled_rate": lim.throttled_rate,
                "throttled_concurrency": lim.throttled_concurrency,
                "max_concurrency": lim.max_concurrency,
                "max_requests_per_minute": lim.max_requests_per_minute,
                "in_flight": lim.in_flight,
                "entities": self.store.counts(),
                "deleted": {e: len(t) for e, t in self.store.tombstones.items()},
            }

    def to_json(self) -> JsonObject:
        with self.lock:
            t = self.tokens
            return {
                "realm_id": self.realm_id,
                "client_id": t.client_id,
                "client_secret": t.client_secret,
                "refresh_token": t.refresh_token,
                "access_token_ttl": t.access_token_ttl,
                "clock_offset": self.clock_offset,
                "store": self.store.to_json(),
            }

    @classmethod
    def from_json(cls, data: JsonObject) -> Realm:
        tokens = Tokens(
            data["client_id"],
            data["client_secret"],
            data["refresh_token"],
            data["access_token_ttl"],
        )
        return cls(
            data["realm_id"],
            tokens,
            Store.from_json(data["store"]),
            clock_offset=data["clock_offset"],
        )
