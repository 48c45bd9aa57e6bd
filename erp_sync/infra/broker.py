"""kombu's Redis transports with one fix: a worker survives Redis going away while a task runs.

The crash (Celery 5.7.0, kombu 5.7.0). On a broker connection error the worker's consumer
(``celery.worker.consumer.Consumer.on_connection_error_after_connected``) first ``collect()``s
the connection, which sets the transport's ``client`` (the kombu ``Connection``: broker URL and
options) to None, and then ``close()``s it, under ``ignore_errors``. Closing a channel hands its
unacknowledged messages back (``virtual.Channel.close`` -> ``QoS.restore_unacked_once`` ->
redis ``QoS.restore_unacked`` -> ``conn_or_acquire``) through a *new* client whose pool is built
by ``Channel._connparams`` from ``self.connection.client``, which is gone: ``AttributeError:
'NoneType' object has no attribute 'hostname'``. ``ignore_errors`` ignores only connection and
channel errors, so the worker process exits ("Unrecoverable error") whenever Redis restarts while
an acks_late task runs. Chaos scenario 4 (tests/support/chaos.py) found it (2 of 2 runs).

Upstream (checked 2026-12-08):
- https://github.com/celery/celery/pull/10242 (merged 2026-04-06, first released in 5.7.0; not
  in 5.6.3) added the ``close()`` after ``collect()``, to fix the reconnect hang of
  https://github.com/celery/celery/issues/9705.
- kombu's ``Channel._connparams`` still reads ``self.connection.client`` unguarded on kombu's
  main branch (last redis.py change looked at: 9ee8595b, 2026-08-20). The same AttributeError from
  a channel closed after its client was dropped: https://github.com/celery/kombu/issues/582
  (kombu 3.0), closed by kombu f033d325, which guards only that call site (the auto-delete queue
  delete in ``Channel.close``), not ``_connparams`` nor the unacked restore.
- No upstream issue names this Celery 5.7 path yet; one is to be filed (kombu: "a channel of a
  collected connection raises AttributeError instead of a connection error").

What is patched: nothing of kombu is changed in place. ``Channel`` and ``SentinelChannel`` below
subclass kombu's and override the private ``_connparams``: when the channel's transport or the
transport's ``client`` is None it raises ``redis.ConnectionError`` (one of the transport's
``connection_errors``) instead, which the consumer ignores before it reconnects. Nothing is lost:
each unacknowledged message is still in the broker's unacked hash in Redis and comes back
through the visibility sweep like any message of a lost worker. ``install()`` points kombu's
``redis``, ``rediss`` and ``sentinel`` schemes (``kombu.transport.TRANSPORT_ALIASES``, and the
private ``_transport_cache``) at these classes, so URLs, TLS defaults and Flower's broker view
stay exactly as before; worker.py calls it for every process.

When it can go: when kombu's ``_connparams`` (or the restore in ``Channel.close``) copes with a
missing ``connection.client``, or Celery's consumer no longer closes a collected connection (or
ignores AttributeError there). To tell: with the kombu/Celery of the upgrade, drop the
``install()`` call from worker.py and run chaos scenario 4 (``.venv/bin/pytest tests/test_chaos.py
-k redis_restart``, then ``.venv/bin/python -m bench.chaos --only 4``): every process must stay
alive. Then delete this module and ``tests/test_broker.py`` (docs/upgrading-celery.md).
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
