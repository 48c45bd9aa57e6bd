"""The config validators as the store and CLI use them: a bad value becomes ``InvalidInput``.

One place, so a user id written to the audit or security log, a ``--as`` value and a granted
user are held to exactly the same rule (``config.validation``).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable

from config import validation
from erp_sync.errors import InvalidInput


def _checked(check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def user_id(value: str) -> str:
    """``value`` if it is a valid user id, else ``InvalidInput`` (never echoing it in full)."""
    return _checked(validation.check_user_id, value)


def timezone(value: str) -> str:
    """``value`` if it is a canonical IANA time zone, else ``InvalidInput``."""
    return _checked(validation.check_timezone, value)


def name(value: str) -> str:
    """``value`` trimmed, if it is a valid display name, else ``InvalidInput``."""
    return _checked(validation.check_name, value)


def os_user() -> str:
    """Who ran this process on the host, for the audit trail (``uid:<n>`` if it has no name)."""
    try:
        found = getpass.getuser()
    except (KeyError, OSError):  # a container uid with no passwd entry and no $USER
        found = ""
    who = found or f"uid:{os.getuid()}"
    try:
        return validation.check_user_id(who)
    except ValueError:  # a forged $USER must not forge an audit row either
        return f"uid:{os.getuid()}"
