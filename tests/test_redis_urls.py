"""Redis URLs: redaction, Sentinel parsing and the broker URL kombu gets."""

from __future__ import annotations

import pytest

from config.env import get_settings
from erp_sync.errors import RedisUnavailable
from erp_sync.infra.celery_config import celery_config
from erp_sync.infra.redis_client import kombu_broker, parse_sentinel, redact

SENTINEL = "sentinel://:pw@10.0.0.1:26379,10.0.0.2/2?master=erp"


def test_passwords_never_show() -> None:
    assert redact("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("rediss://user:hunter2@h:6380/0") == "rediss://user:***@h:6380/0"
    assert redact(SENTINEL) == "sentinel://:***@10.0.0.1:26379,10.0.0.2/2?master=erp"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_db() -> None:
    target = parse_sentinel(SENTINEL)
    assert target is not None
    assert target.hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (target.master, target.db, target.password) == ("erp", 2, "pw")
    assert parse_sentinel("redis://h:6379/0") is None


def test_a_sentinel_url_without_a_master_is_refused() -> None:
    with pytest.raises(RedisUnavailable, match="needs \\?master=NAME"):
        parse_sentinel("sentinel://h:26379/0")


def test_kombu_gets_its_own_sentinel_syntax_and_the_master_name(
    env: pytest.MonkeyPatch,
) -> None:
    assert kombu_broker(SENTINEL) == (
        "sentinel://:pw@10.0.0.1:26379/2;sentinel://:pw@10.0.0.2:26379/2",
        {"master_name": "erp"},
    )
    env.setenv("ERP_SYNC_REDIS_URL", SENTINEL)
    get_settings.cache_clear()
    conf = celery_config(get_settings())
    assert conf["broker_url"].startswith("sentinel://:pw@10.0.0.1:26379/2;")
    assert conf["broker_transport_options"]["master_name"] == "erp"
