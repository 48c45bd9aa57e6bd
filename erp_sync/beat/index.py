"""The due index in Redis and the fenced scripts that change it.

``<prefix>:beat:due`` is a sorted set of ``company:kind`` scored by the next due time; one member
per (company, sync), never one per project: a project-level entry fans out to the company's
projects when it fires. A tick reads only the members that are due (``ZRANGEBYSCORE ... LIMIT``),
so its cost depends on what is due, not on how many companies exist; applying one company's change
touches only that company's (at most four) members.

Both scripts start by comparing the lease with the caller's token (the fence): a beat that is no
longer the leader changes nothing and gets -1 back.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from config.keys import KeySpace
from erp_sync.beat.plan import CompanyPlan, Dispatch
from erp_sync.infra import lua
from erp_sync.schedule.applied import Applied, parse_applied

NOT_LEADER = -1


class DueIndex:
    """Reads and (fenced) writes of the due index and beat's per-company records."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys
        self._apply = lua.load(client, "due_apply")
        self._dispatch = lua.load(client, "due_dispatch")
        self._present = lua.load(client, "due_present")

    def due(self, now: float, limit: int) -> list[tuple[str, float]]:
        rows = self.client.zrangebyscore(
            self.keys.due, "-inf", now, start=0, num=limit, withscores=True
        )
        return [(str(m), float(s)) for m, s in rows]  # type: ignore[str-unpack]

    def next_due(self) -> float | None:
        first = self.client.zrange(self.keys.due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def present(self, members: Sequence[str]) -> list[bool]:
        """Whether each member is in the index (one script call, one short reply)."""
        if not members:
            return []
        mask = str(self._present(keys=[self.keys.due], args=list(members)))
        return [c == "1" for c in mask]

    def applied(self, companies: Sequence[str]) -> dict[str, Applied | None]:
        if not companies:
            return {}
        raws = self.client.hmget(self.keys.beat_applied, list(companies))
        return {c: parse_applied(r) for c, r in zip(companies, raws, strict=True)}

    def apply(
        self, token: str, plans: Sequence[CompanyPlan], versions: dict[str, int], cursor: str | None
    ) -> int:
        args: list[str | float] = [token, cursor or "", len(plans)]
        for plan in plans:
            record = plan.applied.model_dump_json() if plan.applied else ""
            args += [
                plan.company,
                record,
                self.keys.applied_channel(plan.company),
                versions.get(plan.company, 0),
                len(plan.ops),
            ]
            for op, entry, score in plan.ops:
                args += [op, entry, repr(score)]
        keys = [
            self.keys.beat_leader,
            self.keys.due,
            self.keys.beat_applied,
            self.keys.beat_cursor,
            self.keys.beat_stats,
            self.keys.companies,
        ]
        return int(self._apply(keys=keys, args=args))

    def dispatch(self, token: str, batch: Sequence[tuple[Dispatch, str, list[str]]]) -> str | None:
        """Advance each entry and push its messages, atomically; ``None`` when not the leader.

        Returns one flag per entry: ``d`` dispatched, ``m`` moved since read (left alone), ``s``
        a slot at or before the entry's last dispatched slot (advanced, nothing sent), ``g``
        the company was removed (entry dropped), ``p`` the company or fleet is paused
        (advanced, nothing sent).
        """
        args: list[str | float | int] = [token, len(batch)]
        for d, queue, messages in batch:
            nxt = "" if d.next_score is None else repr(d.next_score)
            args += [
                d.member,
                d.company,
                repr(d.expected_score),
                repr(d.slot),
                nxt,
                queue,
                len(messages),
                *messages,
            ]
        keys = [
            self.keys.beat_leader,
            self.keys.due,
            self.keys.beat_stats,
            self.keys.beat_slots,
            self.keys.companies,
            self.keys.paused,
        ]
        flags = self._dispatch(keys=keys, args=args)
        return None if flags == NOT_LEADER else str(flags)
