"""kombu's Redis transports with one fix: a worker survives Redis going away while a task runs.

On a broker connection error, Celery 5.7's consumer first ``collect()``s the connection, which
drops the transport's ``client`` (the broker URL and options), and then ``close()``s it. Closing
the channel hands the consumer's unacknowledged messages back to Redis through a *new* client
built from that ``client``, which is gone: ``AttributeError: 'NoneType' object has no attribute
'hostname'``. The consumer ignores only connection errors there, so the worker process exits
("Unrecoverable error") whenever Redis restarts while a task (acks_late, so unacknowledged) runs.
Chaos scenario 4 (tests/support/chaos.py) found it. Here that channel raises a connection error
instead: the consumer ignores it and reconnects. Nothing is lost: each unacknowledged message is
still in the broker's unacked set in Redis and comes back through the visibility sweep like any
message of a lost worker.

``install()`` points kombu's ``redis``, ``rediss`` and ``sentinel`` schemes at these classes, so
URLs, TLS defaults and Flower's broker view stay exactly as before.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis


class _Survives:
    connection: Any

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection was already torn down")
        params: dict[str, Any] = super()._connparams(  # type: ignore[misc]
            asynchronous=asynchronous
        )
        return params


class Channel(_Survives, kombu_redis.Channel):
    pass


class SentinelChannel(_Survives, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


SCHEMES = {
    "redis": f"{__name__}:Transport",
    "rediss": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}


def install() -> None:
    """Use the transports above for kombu's Redis schemes in this process (idempotent)."""
    for scheme, path in SCHEMES.items():
        if kombu_transport.TRANSPORT_ALIASES.get(scheme) != path:
            kombu_transport.TRANSPORT_ALIASES[scheme] = path
            kombu_transport._transport_cache.pop(scheme, None)
