"""Time stamps as QuickBooks Online writes and reads them.

Intuit writes ``MetaData`` times as ``YYYY-MM-DDTHH:MM:SS±HH:MM`` in the company's time zone and a
response's ``time`` with milliseconds. Assumptions (Intuit's docs do not pin these down):

- Every fake company is on a fixed ``-08:00`` offset (Pacific standard time, no daylight saving):
  a client that assumes UTC or ``Z`` sees wrong instants at once instead of only in summer.
- A time a client sends without an offset (``2015-11-28`` or ``2015-11-28T10:00:00``) is read in
  the company's zone, as Intuit's examples with bare dates suggest; so a naive UTC time is wrong
  by eight hours here, which is the point.
- Times have whole-second resolution, as Intuit's ``MetaData`` does: many changes share a second.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

COMPANY_TZ = timezone(timedelta(hours=-8))
DAY = 86_400


def iso(epoch: float) -> str:
    """A ``MetaData`` time: whole seconds with the company's offset."""
    return datetime.fromtimestamp(math.floor(epoch), COMPANY_TZ).isoformat()


def iso_ms(epoch: float) -> str:
    """A response's ``time``: milliseconds with the company's offset."""
    return datetime.fromtimestamp(epoch, COMPANY_TZ).isoformat(timespec="milliseconds")


def parse(text: str) -> float:
    """Epoch seconds of an ISO 8601 date or date-time; no offset means the company's zone.

    Raises ``ValueError`` for anything else (the caller turns it into a Fault).
    """
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=COMPANY_TZ)
    return value.timestamp()
