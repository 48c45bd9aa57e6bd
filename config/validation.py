"""The one set of input validators: user ids, time zones, display names, and id collisions.

Every path that takes a value from a person (the CLI, the store's write methods, the security
log) goes through these, so a forged or careless value is refused the same way everywhere. They
raise ``ValueError`` with a one-line message that never echoes an over-long value in full; the
store turns that into ``InvalidInput``.

Ids are case-sensitive key segments (``acme`` and ``ACME`` are different strings in Redis, and a
company's keys are spelt with its id as given), but two ids that differ only in case are never
*both* created: ``casefold_key`` is what the store compares when a company or project is added,
so ``ACME`` next to an existing ``acme`` is refused instead of becoming a second company by
accident.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from zoneinfo import available_timezones

USER_ID_MAX = 200
NAME_MAX = 200
SHOWN = 40  # characters of a bad value echoed back in an error message

# Canonical IANA zones live under these areas (plus "UTC"). What is left out depends on the host
# or is a legacy alias: "localtime" (whatever the host's /etc/localtime is), "posixrules",
# "Factory", "US/*" and other backward links, "Etc/*" fixed offsets, "EST5EDT"-style POSIX rules.
_AREAS = (
    "Africa/",
    "America/",
    "Antarctica/",
    "Arctic/",
    "Asia/",
    "Atlantic/",
    "Australia/",
    "Europe/",
    "Indian/",
    "Pacific/",
)


def shorten(value: str) -> str:
    """``value`` as shown in an error: its repr, cut to ``SHOWN`` characters if longer."""
    if len(value) <= SHOWN:
        return repr(value)
    return f"{value[:SHOWN]!r}... ({len(value)} characters)"


def check_user_id(value: str) -> str:
    """A user id: 1-200 printable characters, no control characters (so no forged log rows)."""
    if not 1 <= len(value) <= USER_ID_MAX:
        raise ValueError(f"user id must be 1-{USER_ID_MAX} characters, got {len(value)}")
    bad = next((c for c in value if not c.isprintable() or unicodedata.category(c)[0] == "C"), None)
    if bad is not None:
        raise ValueError(
            f"user id {shorten(value)} contains a control or non-printable "
            f"character (U+{ord(bad):04X})"
        )
    if value != value.strip():
        raise ValueError(f"user id {shorten(value)} has leading or trailing spaces")
    return value


@lru_cache(maxsize=1)
def _canonical_zones() -> frozenset[str]:
    return frozenset(z for z in available_timezones() if z == "UTC" or z.startswith(_AREAS))


def check_timezone(value: str) -> str:
    """A canonical IANA time zone name (``America/Chicago``, ``UTC``), never a host-dependent
    one."""
    if value not in _canonical_zones():
        raise ValueError(
            f"{shorten(value)} is not an IANA time zone in canonical form "
            "(e.g. America/Chicago, Europe/London, UTC)"
        )
    return value


def check_name(value: str) -> str:
    """A display name, trimmed: 1-200 characters, no control characters."""
    trimmed = value.strip()
    if not trimmed:
        raise ValueError("name must not be empty")
    if len(trimmed) > NAME_MAX:
        raise ValueError(f"name must be at most {NAME_MAX} characters, got {len(trimmed)}")
    if any(unicodedata.category(c)[0] == "C" for c in trimmed):
        raise ValueError(f"name {shorten(trimmed)} contains a control character")
    return trimmed


def casefold_key(identifier: str) -> str:
    """What two ids must not share: ids that differ only in case collide."""
    return identifier.casefold()
