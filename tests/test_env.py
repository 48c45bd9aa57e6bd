"""Process configuration from ERP_SYNC_* variables."""

from __future__ import annotations

import pytest

from config.env import get_settings
from erp_sync.errors import ConfigError


def test_defaults_match_the_design(env: pytest.MonkeyPatch) -> None:
    env.delenv("ERP_SYNC_KEY_PREFIX")
    get_settings.cache_clear()
    s = get_settings()
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.effective_broker_url == s.redis_url
    assert s.key_prefix == "erp_sync"
    assert s.seconds_per_hour == 3600


def test_a_misspelt_variable_is_an_error_not_silently_ignored(env: pytest.MonkeyPatch) -> None:
    env.setenv("ERP_SYNC_REDSI_URL", "redis://x")
    with pytest.raises(ConfigError, match="ERP_SYNC_REDSI_URL"):
        get_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ERP_SYNC_SECONDS_PER_HOUR", "0"),
        ("ERP_SYNC_SECONDS_PER_HOUR", "fast"),
        ("ERP_SYNC_KEY_PREFIX", "has space"),
    ],
)
def test_a_bad_value_names_the_variable(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        get_settings()


def test_a_visibility_timeout_below_the_hard_limit_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("ERP_SYNC_VISIBILITY_TIMEOUT", "10")
    with pytest.raises(ConfigError, match="visibility_timeout"):
        get_settings()
