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
from erp_sync.applied import Applied
from erp_sync.beat.plan import CompanyPlan, Dispatch

NOT_LEADER = -1

# KEYS: leader, due, applied, cursor, stats
# ARGV: token, cursor ('' = keep), n_plans, then per plan:
#   company, applied_json ('' = delete), channel, version, n_ops, then n_ops x (op, member, score)
APPLY = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local i = 4
for p = 1, tonumber(ARGV[3]) do
  local company, record, channel, version = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local n = tonumber(ARGV[i+4])
  i = i + 5
  for o = 1, n do
    local op, member, score = ARGV[i], ARGV[i+1], ARGV[i+2]
    if op == 'rem' then redis.call('zrem', KEYS[2], member)
    elseif op == 'nx' then redis.call('zadd', KEYS[2], 'NX', score, member)
    else redis.call('zadd', KEYS[2], score, member) end
    i = i + 3
  end
  if record == '' then redis.call('hdel', KEYS[3], company)
  else redis.call('hset', KEYS[3], company, record) end
  redis.call('publish', channel, version)
end
if ARGV[2] ~= '' then redis.call('set', KEYS[4], ARGV[2]) end
redis.call('hincrby', KEYS[5], 'applied', tonumber(ARGV[3]))
return tonumber(ARGV[3])
"""

# KEYS: leader, due, stats
# ARGV: token, n_entries, then per entry:
#   member, expected_score, next_score ('' = remove), queue, n_msgs, then n_msgs messages
# An entry whose score moved since it was read (a change re-timed it) is left alone.
DISPATCH = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local i = 3
local slots, messages = 0, 0
for e = 1, tonumber(ARGV[2]) do
  local member, expected, nxt, queue = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2], ARGV[i+3]
  local n = tonumber(ARGV[i+4])
  i = i + 5
  local current = redis.call('zscore', KEYS[2], member)
  if current and math.abs(tonumber(current) - expected) < 0.0005 then
    if nxt == '' then redis.call('zrem', KEYS[2], member)
    else redis.call('zadd', KEYS[2], nxt, member) end
    for m = 0, n - 1 do redis.call('lpush', queue, ARGV[i + m]) end
    slots = slots + 1
    messages = messages + n
  end
  i = i + n
end
redis.call('hincrby', KEYS[3], 'slots', slots)
redis.call('hincrby', KEYS[3], 'messages', messages)
return slots
"""


class DueIndex:
    """Reads and (fenced) writes of the due index and beat's per-company records."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys
        self._apply = client.register_script(APPLY)
        self._dispatch = client.register_script(DISPATCH)

    def due(self, now: float, limit: int) -> list[tuple[str, float]]:
        rows = self.client.zrangebyscore(self.keys.due, "-inf", now, start=0, num=limit,
                                         withscores=True)
        return [(str(m), float(s)) for m, s in rows]  # type: ignore[str-unpack]

    def next_due(self) -> float | None:
        first = self.client.zrange(self.keys.due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def backlog(self, now: float) -> int:
        return int(self.client.zcount(self.keys.due, "-inf", now))

    def applied(self, companies: Sequence[str]) -> dict[str, Applied | None]:
        if not companies:
            return {}
        raws = self.client.hmget(self.keys.beat_applied, list(companies))
        return {c: parse_applied(r) for c, r in zip(companies, raws, strict=True)}

    def apply(self, token: str, plans: Sequence[CompanyPlan], versions: dict[str, int],
              cursor: str | None) -> int:
        args: list[str | float] = [token, cursor or "", len(plans)]
        for plan in plans:
            record = plan.applied.model_dump_json() if plan.applied else ""
            args += [plan.company, record, self.keys.applied_channel(plan.company),
                     versions.get(plan.company, 0), len(plan.ops)]
            for op, entry, score in plan.ops:
                args += [op, entry, repr(score)]
        keys = [self.keys.beat_leader, self.keys.due, self.keys.beat_applied,
                self.keys.beat_cursor, self.keys.beat_stats]
        return int(self._apply(keys=keys, args=args))

    def dispatch(self, token: str, batch: Sequence[tuple[Dispatch, str, list[str]]]) -> int:
        """Advance each entry and push its messages, atomically; -1 when no longer leader."""
        args: list[str | float | int] = [token, len(batch)]
        for d, queue, messages in batch:
            nxt = "" if d.next_score is None else repr(d.next_score)
            args += [d.member, repr(d.expected_score), nxt, queue, len(messages), *messages]
        keys = [self.keys.beat_leader, self.keys.due, self.keys.beat_stats]
        return int(self._dispatch(keys=keys, args=args))


def parse_applied(raw: object) -> Applied | None:
    """Beat's record of a company, or ``None`` when missing or unreadable."""
    if not raw:
        return None
    try:
        return Applied.model_validate_json(str(raw))
    except ValueError:
        return None
