"""The Redis transport fix of ``erp_sync/infra/broker.py``, on a real redis-server."""

from __future__ import annotations

import pytest
import redis
from kombu.connection import Connection

from config.env import Settings
from erp_sync.infra.broker import Channel, Transport, install
from erp_sync.infra.celery_config import celery_config
from tests.support.redisproc import RedisServer

pytestmark = pytest.mark.integration


def test_the_app_uses_the_fixed_transport_and_keeps_the_redis_url() -> None:
    from celery import Celery
    from kombu import transport

    import worker  # installing the transport is part of building the app

    assert worker.app.main == "erp_sync"
    assert transport.TRANSPORT_ALIASES["redis"] == "erp_sync.infra.broker:Transport"
    app = Celery("t", set_as_current=False)
    app.config_from_object(celery_config(Settings(redis_url="redis://:pw@127.0.0.1:1/0")))
    conn = app.connection_for_read()
    assert isinstance(conn.transport, Transport)
    assert conn.as_uri() == "redis://:**@127.0.0.1:1/0"  # Flower and logs still see redis://
    app.close()


def test_a_channel_of_a_collected_connection_fails_with_a_connection_error(
    redis_server: RedisServer, prefix: str
) -> None:
    # Celery 5.7's consumer, when Redis goes away mid-poll, collect()s the connection (dropping
    # the transport's client) and then closes it, which restores unacked messages through a new
    # client. kombu's own channel raised AttributeError there (not ignored: the worker died);
    # ours raises a connection error, which the consumer ignores before it reconnects.
    install()
    conn = Connection(  # type: ignore[no-untyped-call]
        redis_server.url, transport_options={"global_keyprefix": f"{prefix}:"}
    )
    channel = conn.default_channel
    assert isinstance(channel, Channel)
    conn.transport.client = None  # what collect() leaves when the channel's close failed mid-poll
    with pytest.raises(redis.ConnectionError) as caught:
        channel._connparams()
    assert isinstance(caught.value, Transport.connection_errors)
