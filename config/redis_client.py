"""Opening Redis with errors an operator can act on.

A connection failure becomes ``RedisUnavailable`` naming the URL (password removed), so the CLI can
print one line instead of a traceback.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from erp_sync.errors import RedisUnavailable


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(url: str, *, check: bool = True, **kwargs: Any) -> redis.Redis:
    """A client for ``url``; with ``check`` it pings first so failures surface here, clearly."""
    options: dict[str, Any] = {"socket_connect_timeout": 3, "health_check_interval": 10}
    options.update(kwargs)
    try:
        client = redis.Redis.from_url(url, decode_responses=True, **options)
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {redact(url)}: {exc}") from None
    if check:
        ping(client, url)
    return client


def ping(client: redis.Redis, url: str) -> None:
    """Raise ``RedisUnavailable`` with a one-line reason if Redis does not answer."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {redact(url)} refused our credentials: {exc}") from None
    except redis.RedisError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RedisUnavailable(f"cannot reach Redis at {redact(url)}: {reason}") from None
