"""What of a company the key space still holds: every key with the company as a segment and its
fields or members in fleet-wide keys, and the part of that the removal inventory does not keep
(``config/inventory.py``). Used after ``company remove``, in-process and on real processes."""

from __future__ import annotations

import inspect

import redis

from config.inventory import COMPANY_KEYS, TASK_KEYS, OnRemoval
from config.keys import KeySpace


def holding(client: redis.Redis, keys: KeySpace, company: str) -> set[str]:
    """Keys with ``company`` as a segment, and fleet-wide fields or members naming it."""
    found = {
        str(k)
        for k in client.scan_iter(f"{keys.prefix}:*", count=1000)
        if company in str(k).split(":")[1:]
    }
    for key in (keys.due, keys.paused_until, keys.alert_deadlines):
        found |= {f"{key} {m!s}" for m in client.zrange(key, 0, -1) if company in str(m).split(":")}
    for key in (keys.beat_slots, keys.beat_applied, keys.paused, keys.rate_limit_overrides):
        found |= {f"{key} {f!s}" for f in client.hkeys(key) if company in str(f).split(":")}
    if client.sismember(keys.companies, company):
        found.add(f"{keys.companies} {company}")
    return found


def _kept(keys: KeySpace, key: str, company: str) -> bool:
    """Whether ``key`` is one the inventory keeps (or leaves to expire) for ``company``."""
    fates = {**COMPANY_KEYS, **TASK_KEYS}
    for name, fate in fates.items():
        if fate is OnRemoval.DELETE:
            continue
        params = inspect.signature(getattr(KeySpace, name)).parameters
        head = getattr(keys, name)(*(["\x01"] * (len(params) - 1))).split("\x01")[0]
        if key.startswith(head) and (name != "executed" or f":{company}:" in key):
            return True
    return key == keys.removed


def leftover(client: redis.Redis, keys: KeySpace, company: str) -> list[str]:
    """What ``holding`` finds that the inventory neither keeps nor leaves to expire."""
    return sorted(k for k in holding(client, keys, company) if not _kept(keys, k, company))
