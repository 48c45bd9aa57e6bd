"""Opening Redis with errors an operator can act on, directly or through Redis Sentinel.

A connection failure becomes ``RedisUnavailable`` naming the URL (every secret in it masked, a
``?password=`` parameter too), so the CLI can print one line instead of a traceback.

Sentinel URLs keep a deployment's whole Redis address in the one ``ERP_SYNC_REDIS_URL``:
``sentinel://[:password@]host:port[,host:port...]/db?master=NAME``. The password is the
primary's; the sentinels themselves are contacted without one. The same string works as the
Celery broker (translated for kombu's sentinel transport by ``kombu_broker``), so beat, workers
and the settings store always talk to the same primary, and follow it after a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

from config.urls import mask_urls
from erp_sync.errors import RedisUnavailable

# Replace undecodable bytes instead of raising: a corrupt value then fails validation as a
# CorruptRecord (one clear line, beat skips that company) rather than crashing the reader.
DECODING: dict[str, Any] = {"decode_responses": True, "encoding_errors": "replace"}


def redact(url: str) -> str:
    """``url`` (or a message holding URLs) with every secret masked, the userinfo password and
    ``?password=``-style parameters alike (``config.urls``): safe for logs and error lines."""
    return mask_urls(url)


@dataclass(frozen=True)
class SentinelTarget:
    hosts: list[tuple[str, int]]
    master: str
    db: int
    password: str | None


def parse_sentinel(url: str) -> SentinelTarget | None:
    """The parts of a ``sentinel://`` URL, or ``None`` for any other scheme."""
    parts = urlsplit(url)
    if parts.scheme != "sentinel":
        return None
    auth, _, hostlist = parts.netloc.rpartition("@")
    password = auth.split(":", 1)[1] if ":" in auth else None
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.partition(":")
        if not host:
            raise RedisUnavailable(f"invalid Sentinel URL {redact(url)}: empty host")
        try:
            hosts.append((host, int(port or 26379)))
        except ValueError:
            raise RedisUnavailable(f"invalid Sentinel URL {redact(url)}: bad port") from None
    master = parse_qs(parts.query).get("master", [""])[0]
    if not master:
        raise RedisUnavailable(f"Sentinel URL {redact(url)} needs ?master=NAME")
    db = parts.path.strip("/")
    return SentinelTarget(hosts, master, int(db) if db.isdigit() else 0, password or None)


def kombu_broker(url: str) -> tuple[str, dict[str, Any]]:
    """The broker URL and extra transport options kombu needs for ``url``."""
    target = parse_sentinel(url)
    if target is None:
        return _credentials_in_userinfo(url), {}
    auth = f":{target.password}@" if target.password else ""
    joined = ";".join(f"sentinel://{auth}{h}:{p}/{target.db}" for h, p in target.hosts)
    return joined, {"master_name": target.master}


def _credentials_in_userinfo(url: str) -> str:
    """``url`` with a ``?password=`` (and ``?username=``) moved into its userinfo: redis-py
    reads either form, kombu takes the query's ``password`` for its own keyword and fails
    every worker's start with a ``TypeError``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    moved = {k: v for k, v in query if k in ("username", "password")}
    if not moved:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = moved.get("username", unquote(parts.username or ""))
    password = moved.get("password", unquote(parts.password or ""))
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    rest = urlencode([(k, v) for k, v in query if k not in moved])
    return urlunsplit(parts._replace(netloc=netloc, query=rest))


def connect(url: str, *, check: bool = True, **kwargs: Any) -> redis.Redis:
    """A client for ``url``; with ``check`` it pings first so failures surface here, clearly."""
    options: dict[str, Any] = {"socket_connect_timeout": 3, "health_check_interval": 10}
    options.update(kwargs)
    try:
        target = parse_sentinel(url)
        if target is None:
            client = redis.Redis.from_url(url, **DECODING, **options)
        else:
            sentinel = Sentinel(
                target.hosts, socket_connect_timeout=options["socket_connect_timeout"]
            )
            client = sentinel.master_for(
                target.master, db=target.db, password=target.password, **DECODING, **options
            )
    except ValueError as exc:
        raise RedisUnavailable(redact(f"invalid Redis URL {url}: {exc}")) from None
    if check:
        ping(client, url)
    return client


def ping(client: redis.Redis, url: str) -> None:
    """Raise ``RedisUnavailable`` with a one-line reason if Redis does not answer."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(redact(f"Redis at {url} refused our credentials: {exc}")) from None
    except redis.RedisError as exc:
        raise RedisUnavailable(redact(f"cannot reach Redis at {url}: {_reason(exc)}")) from None
    except (TypeError, ValueError) as exc:  # an option redis-py does not know (``?PASSWORD=``)
        raise RedisUnavailable(redact(f"invalid Redis URL {url}: {_reason(exc)}")) from None


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
