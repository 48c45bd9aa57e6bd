"""Redis URLs: redaction, Sentinel parsing and the broker URL kombu gets."""

from __future__ import annotations

import pytest

from config.env import get_settings
from config.urls import mask_url, mask_urls
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


# --- one masking function for every URL shown -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0?password=hunter2", "redis://h:6379/0?password=***"),
        ("redis://h/0?db=1&PassWord=hunter2&x=1", "redis://h/0?db=1&PassWord=***&x=1"),
        ("postgresql://u:hunter2@h/db?pwd=hunter2", "postgresql://u:***@h/db?pwd=***"),
        (
            "https://h/a?token=hunter2&access_token=hunter2",
            "https://h/a?token=***&access_token=***",
        ),
        ("https://h/a?API-KEY=hunter2&sig=hunter2", "https://h/a?API-KEY=***&sig=***"),
        ("https://h/a?X-Amz-Signature=hunter2", "https://h/a?X-Amz-Signature=***"),
        (
            "https://h/a?client_secret=hunter2&auth=hunter2",
            "https://h/a?client_secret=***&auth=***",
        ),
        ("https://h/cb#access_token=hunter2&state=s", "https://h/cb#access_token=***&state=s"),
        ("redis://:hun#ter2@h/0", "redis://:***@h/0"),  # a password a parser would split
        ("redis://:p@ss@h/0", "redis://:***@h/0"),
        ("sqlite://x:notaport/", "sqlite://x:notaport/"),  # malformed: shown, never raises
        ("nosuch://h/db?secret=hunter2", "nosuch://h/db?secret=***"),
        ("https://h/a?page=2&keyword=x", "https://h/a?page=2&keyword=x"),
    ],
)
def test_every_secret_bearing_part_of_a_url_is_masked_and_nothing_else(
    url: str, shown: str
) -> None:
    assert mask_url(url) == shown
    assert redact(url) == shown  # the Redis client's name for it delegates


def test_urls_inside_a_message_are_masked_and_the_message_stays_readable() -> None:
    message = "cannot reach Redis at redis://h/0?password=hunter2: Connection refused."
    assert redact(message) == "cannot reach Redis at redis://h/0?password=***: Connection refused."
    assert mask_urls("see 'https://u:hunter2@h/x?key=k'.") == "see 'https://u:***@h/x?key=***'."


def test_kombu_gets_a_query_password_in_the_userinfo_where_it_does_not_clash() -> None:
    assert kombu_broker("redis://h:6379/0?password=p%40ss&db=1") == (
        "redis://:p%40ss@h:6379/0?db=1",
        {},
    )
    assert kombu_broker("redis://u:old@h/0?password=new")[0] == "redis://u:new@h/0"
    assert kombu_broker("redis://h:6379/0") == ("redis://h:6379/0", {})
