"""The change feed: the settings store's stream, read from a cursor that survives restarts.

Pub/sub would drop changes made while beat is away; a stream read from the last applied id
cannot. The cursor is stored by the same fenced script that applies a change, so a new leader
resumes exactly where the last one stopped. If the stream was trimmed past the cursor (beat was
down for longer than the stream's cap), entries are gone and the caller must resync in full.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

from config.keys import KeySpace


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _trimmed_past(info: dict[str, object], cursor: str) -> bool:
    """From ``XINFO STREAM``: were entries after ``cursor`` trimmed away?

    Trimming removes the oldest entries first, so entries were lost exactly when the oldest
    remaining entry is newer than the cursor and some were ever removed (or the stream is empty
    yet has grown past the cursor). When the cursor's own entry was the last one trimmed this
    says "lost" needlessly; the price is one full rebuild, never a lost change.
    """
    first = info.get("first-entry")
    if not first:
        return _id(str(info["last-generated-id"])) > _id(cursor)
    if "entries-added" not in info:  # Redis < 7.0 does not say: assume the worst, rebuild
        return _id(str(first[0])) > _id(cursor)  # type: ignore[index]
    trimmed = int(str(info["entries-added"])) > int(str(info["length"]))
    return trimmed and _id(str(first[0])) > _id(cursor)  # type: ignore[index]


class ChangeFeed:
    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys

    def saved_cursor(self) -> str | None:
        raw = self.client.get(self.keys.beat_cursor)
        return str(raw) if raw else None

    def _info(self) -> dict[str, object] | None:
        try:
            return dict(self.client.xinfo_stream(self.keys.changes))
        except redis.ResponseError:  # no stream yet: nothing was ever changed
            return None

    def head(self) -> str:
        """The id of the newest entry ever added (what a full resync has covered)."""
        info = self._info()
        return str(info["last-generated-id"]) if info else "0-0"

    def lost_since(self, cursor: str) -> bool:
        """Whether entries after ``cursor`` may have been trimmed away before beat read them."""
        info = self._info()
        return bool(info) and _trimmed_past(info, cursor)  # type: ignore[arg-type]

    def read(self, cursor: str, count: int) -> tuple[list[tuple[str, str]], bool]:
        """Up to ``count`` (id, company) after ``cursor``, and whether entries after ``cursor``
        were trimmed before they were read (then the caller must rebuild in full).

        The trim check rides in the same round trip as the read, so a leader that falls more
        than the stream's cap behind while running notices it on its next read.
        """
        pipe = self.client.pipeline(transaction=False)
        self.queue_read(pipe, cursor, count)
        return self.parse_read(pipe.execute(raise_on_error=False), cursor)

    def queue_read(self, pipe: redis.client.Pipeline, cursor: str, count: int) -> None:
        """Add ``read``'s two commands to ``pipe`` (the caller may batch more with them)."""
        pipe.xinfo_stream(self.keys.changes)
        pipe.xread({self.keys.changes: cursor}, count=count)

    def parse_read(self, replies: list[Any], cursor: str) -> tuple[list[tuple[str, str]], bool]:
        """``read``'s result from the two replies ``queue_read`` asked for."""
        info, reply = replies
        if isinstance(info, redis.ResponseError):  # no stream yet: nothing was ever changed
            return [], False
        if isinstance(info, Exception):
            raise info
        if isinstance(reply, Exception):
            raise reply
        lost = _trimmed_past(dict(info), cursor)
        if not reply:
            return [], lost
        # RESP2 answers [[stream, entries]], RESP3 {stream: [entries]}.
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        return [(str(i), str((fields or {}).get("company", ""))) for i, fields in entries], lost


class FeedWatcher:
    """Wakes the beat loop the moment a change arrives.

    A thread blocks on ``XREAD`` for new stream entries and sets ``event``; the loop waits on the
    event with a precise local timeout (the time until the next due entry). Blocking the loop
    itself in ``XREAD ... BLOCK`` would make dispatch up to 100 ms late, because Redis expires
    blocking timeouts in its ``hz`` cron. The watcher only signals; the loop reads from its own
    durable cursor, so nothing depends on the watcher having seen an entry.
    """

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys
        self.event = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="change-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last = "$"
        while not self._stop.is_set():
            try:
                reply: Any = self.client.xread({self.keys.changes: last}, count=100, block=1000)
            except Exception:  # the watcher must outlive any connection failure
                self.event.set()  # let the loop see the outage (and catch up after it)
                self._stop.wait(0.5)
                continue
            if reply:
                entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
                last = str(entries[-1][0])
                self.event.set()
