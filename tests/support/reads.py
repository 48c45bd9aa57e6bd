"""Typed reads of the sorted sets and streams tests look at, on a decoding client.

redis-py types a reply as the union of every shape the command can return (members, (member,
score) pairs, ... or ``None``), so each read here names the one shape it asks for.
"""

from __future__ import annotations

from typing import cast

import redis


def zmembers(client: redis.Redis, key: str) -> list[str]:
    """The members of a sorted set, lowest score first."""
    return cast(list[str], client.zrange(key, 0, -1))


def zscores(client: redis.Redis, key: str) -> dict[str, float]:
    """Member -> score of a sorted set."""
    return dict(cast(list[tuple[str, float]], client.zrange(key, 0, -1, withscores=True)))


def xentries(client: redis.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    """(id, fields) of every entry of a stream, oldest first."""
    return cast(list[tuple[str, dict[str, str]]], client.xrange(key))
