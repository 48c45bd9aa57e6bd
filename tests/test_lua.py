"""Every Lua script: its header names what it uses, and it does what the header says on a real
redis-server (fakeredis emulates Lua, so it alone proves nothing about the real interpreter)."""

from __future__ import annotations

import itertools
import json
import re
from importlib import resources

import pytest
import redis

from config.keys import KeySpace
from erp_sync.infra import lua
from erp_sync.runs.facts import RunFacts
from erp_sync.runs.locks import RunLock, StartReply, StartState

pytestmark = pytest.mark.integration


def names() -> list[str]:
    """Every script's name (without ``.lua``; included functions, ``_NAME.lua``, left out)."""
    return sorted(
        p.name.removesuffix(".lua")
        for p in resources.files(lua.__name__).iterdir()
        if p.name.endswith(".lua") and not p.name.startswith("_")
    )


def _header_and_body(name: str) -> tuple[str, str]:
    lines = lua.source(name).splitlines()
    n = next(i for i, line in enumerate(lines) if not line.startswith("--"))
    return "\n".join(lines[:n]), "\n".join(
        line for line in lines[n:] if not line.lstrip().startswith("--")
    )


@pytest.mark.parametrize("name", names())
def test_every_key_and_argument_a_script_uses_is_named_in_its_header(name: str) -> None:
    header, body = _header_and_body(name)
    assert header.splitlines()[0].startswith("-- "), f"{name}.lua has no opening line"
    for kind in ("KEYS", "ARGV"):
        for index in sorted(set(re.findall(rf"{kind}\[(\d+)\]", body))):
            assert f"-- {kind}[{index}]" in header, f"{name}.lua: {kind}[{index}] unnamed"
        if f"{kind}[" in body:
            assert f"-- {kind}" in header, f"{name}.lua: {kind} used but not described"
    assert "Returns" in header, f"{name}.lua does not say what it returns"


def test_includes_expand_and_only_shared_functions_are_left_out_of_the_scripts() -> None:
    assert "local function save" in lua.source("run_start")
    assert "--#include" not in lua.source("run_finish")
    assert "_save_run" not in names()


@pytest.fixture
def r(real: redis.Redis) -> redis.Redis:
    return real


def test_lease_scripts_take_renew_and_release_only_for_the_holder(
    r: redis.Redis, keys: KeySpace
) -> None:
    acquire, renew = lua.load(r, "lease_acquire"), lua.load(r, "lease_renew")
    release = lua.load(r, "compare_and_delete")
    token = acquire(keys=[keys.beat_leader, keys.beat_epoch], args=["a", 5000])
    assert token == "a|1"
    assert acquire(keys=[keys.beat_leader, keys.beat_epoch], args=["b", 5000]) is None
    assert renew(keys=[keys.beat_leader], args=["b|2", 5000]) == 0
    assert renew(keys=[keys.beat_leader], args=[token, 9000]) == 1
    assert r.pttl(keys.beat_leader) > 5000
    assert release(keys=[keys.beat_leader], args=["b|2"]) == 0
    assert release(keys=[keys.beat_leader], args=[token]) == 1
    assert acquire(keys=[keys.beat_leader, keys.beat_epoch], args=["b", 5000]) == "b|2"


def _leader(r: redis.Redis, keys: KeySpace) -> str:
    return str(
        lua.load(r, "lease_acquire")(keys=[keys.beat_leader, keys.beat_epoch], args=["n", 5000])
    )


def test_due_apply_is_fenced_and_applies_rem_nx_and_set(r: redis.Redis, keys: KeySpace) -> None:
    token = _leader(r, keys)
    apply = lua.load(r, "due_apply")
    r.zadd(keys.due, {"acme:vendors": 10.0, "acme:jobs": 20.0, "acme:payments": 30.0})
    r.sadd(keys.companies, "acme")
    ks = [
        keys.beat_leader,
        keys.due,
        keys.beat_applied,
        keys.beat_cursor,
        keys.beat_stats,
        keys.companies,
    ]
    plan: list[str | float] = [
        "acme",
        '{"v": 2}',
        keys.applied_channel("acme"),
        2,
        3,
        "nx",
        "acme:vendors",
        99.0,
        "set",
        "acme:jobs",
        99.0,
        "rem",
        "acme:payments",
        0,
    ]
    assert apply(keys=ks, args=["someone|9", "5-0", 1, *plan]) == -1
    assert r.zcard(keys.due) == 3 and r.get(keys.beat_cursor) is None
    assert apply(keys=ks, args=[token, "5-0", 1, *plan]) == 1
    assert r.zrange(keys.due, 0, -1, withscores=True) == [
        ("acme:vendors", 10.0),
        ("acme:jobs", 99.0),
    ]
    assert r.hget(keys.beat_applied, "acme") == '{"v": 2}'
    assert r.get(keys.beat_cursor) == "5-0"
    assert apply(keys=ks, args=[token, "", 1, "acme", "", "c", 3, 0]) == 1
    assert r.hget(keys.beat_applied, "acme") is None and r.get(keys.beat_cursor) == "5-0"


def test_due_dispatch_advances_and_queues_together_and_skips_moved_entries(
    r: redis.Redis, keys: KeySpace
) -> None:
    token = _leader(r, keys)
    dispatch = lua.load(r, "due_dispatch")
    r.zadd(keys.due, {"a:vendors": 10.0, "b:vendors": 10.0, "c:vendors": 10.0})
    r.sadd(keys.companies, "a", "b", "c")
    ks = [keys.beat_leader, keys.due, keys.beat_stats, keys.beat_slots, keys.companies, keys.paused]
    q = keys.queue("company")
    batch: list[str | float] = [
        2,
        "a:vendors",
        "a",
        10.0,
        10.0,
        20.0,
        q,
        1,
        "m-a",
        "b:vendors",
        "b",
        7.0,
        7.0,
        20.0,
        q,
        1,
        "m-b",
    ]
    assert dispatch(keys=ks, args=["x|1", *batch]) == -1
    assert r.llen(q) == 0
    assert dispatch(keys=ks, args=[token, *batch]) == "dm"  # b's score moved: left alone
    assert r.lrange(q, 0, -1) == ["m-a"]
    assert r.zscore(keys.due, "a:vendors") == 20.0 and r.zscore(keys.due, "b:vendors") == 10.0
    assert r.hget(keys.beat_slots, "a:vendors") == "10.0"
    assert dispatch(keys=ks, args=[token, 1, "c:vendors", "c", 10.0, 10.0, "", q, 0]) == "d"
    assert r.zscore(keys.due, "c:vendors") is None
    assert r.hgetall(keys.beat_stats) == {"slots": "2", "messages": "1"}


def test_due_dispatch_never_sends_a_slot_at_or_before_the_last_one_dispatched(
    r: redis.Redis, keys: KeySpace
) -> None:
    token = _leader(r, keys)
    dispatch = lua.load(r, "due_dispatch")
    ks = [keys.beat_leader, keys.due, keys.beat_stats, keys.beat_slots, keys.companies, keys.paused]
    q = keys.queue("company")
    r.zadd(keys.due, {"a:vendors": 10.0})
    r.sadd(keys.companies, "a")
    assert dispatch(keys=ks, args=[token, 1, "a:vendors", "a", 10.0, 10.0, 20.0, q, 1, "m1"]) == "d"
    r.zadd(keys.due, {"a:vendors": 10.0})  # a wrong clock or lost state re-times it backwards
    assert dispatch(keys=ks, args=[token, 1, "a:vendors", "a", 10.0, 10.0, 20.0, q, 1, "m2"]) == "s"
    assert r.lrange(q, 0, -1) == ["m1"] and r.zscore(keys.due, "a:vendors") == 20.0
    assert dispatch(keys=ks, args=[token, 1, "a:vendors", "a", 20.0, 20.0, 30.0, q, 1, "m3"]) == "d"
    assert r.lrange(q, 0, -1) == ["m3", "m1"]
    assert r.hget(keys.beat_stats, "stale_slots") == "1"


def test_due_dispatch_sends_nothing_for_a_removed_or_paused_company(
    r: redis.Redis, keys: KeySpace
) -> None:
    token = _leader(r, keys)
    dispatch = lua.load(r, "due_dispatch")
    ks = [keys.beat_leader, keys.due, keys.beat_stats, keys.beat_slots, keys.companies, keys.paused]
    q = keys.queue("company")
    r.zadd(keys.due, {"gone:vendors": 10.0, "held:vendors": 10.0, "live:vendors": 10.0})
    r.sadd(keys.companies, "held", "live")
    r.hset(keys.paused, "held", "{}")
    batch: list[str | float] = [
        3,
        "gone:vendors",
        "gone",
        10.0,
        10.0,
        20.0,
        q,
        1,
        "m-gone",
        "held:vendors",
        "held",
        10.0,
        10.0,
        20.0,
        q,
        1,
        "m-held",
        "live:vendors",
        "live",
        10.0,
        10.0,
        20.0,
        q,
        1,
        "m-live",
    ]
    assert dispatch(keys=ks, args=[token, *batch]) == "gpd"
    assert r.lrange(q, 0, -1) == ["m-live"]
    assert r.zscore(keys.due, "gone:vendors") is None
    assert r.zscore(keys.due, "held:vendors") == 20.0  # advanced: resumes at the next slot
    assert r.hget(keys.beat_slots, "held:vendors") is None
    r.hset(keys.paused, "*", "{}")  # the whole fleet
    batch = [1, "live:vendors", "live", 20.0, 20.0, 30.0, q, 1, "m-live-2"]
    assert dispatch(keys=ks, args=[token, *batch]) == "p"
    assert r.lrange(q, 0, -1) == ["m-live"] and r.hget(keys.beat_stats, "paused_slots") == "2"


def test_due_apply_never_schedules_a_company_removed_after_its_plan_was_made(
    r: redis.Redis, keys: KeySpace
) -> None:
    token = _leader(r, keys)
    apply = lua.load(r, "due_apply")
    ks = [
        keys.beat_leader,
        keys.due,
        keys.beat_applied,
        keys.beat_cursor,
        keys.beat_stats,
        keys.companies,
    ]
    r.zadd(keys.due, {"acme:jobs": 5.0})
    plan: list[str | float] = [
        "acme",
        '{"v": 2}',
        keys.applied_channel("acme"),
        2,
        2,
        "set",
        "acme:vendors",
        99.0,
        "nx",
        "acme:jobs",
        99.0,
    ]
    assert apply(keys=ks, args=[token, "", 1, *plan]) == 1
    assert r.zcard(keys.due) == 0 and r.hget(keys.beat_applied, "acme") is None


def test_run_scripts_lock_record_finish_and_cap_the_history(r: redis.Redis, keys: KeySpace) -> None:
    start, finish = lua.load(r, "run_start"), lua.load(r, "run_finish")
    save, facts = lua.load(r, "history_save"), lua.load(r, "run_facts")
    lock, runs, hist, running = (
        keys.run_lock("acme", "vendors", None),
        keys.runs("acme"),
        keys.history("acme"),
        keys.running("acme"),
    )
    ks = [lock, runs, hist, running, keys.executed("t1")]
    assert start(keys=ks, args=["t1|a", 60_000, '{"s": "running"}', 2, 2, "t1", "t1|deferred"]) == [
        "ok"
    ]
    assert start(
        keys=[*ks[:4], keys.executed("t2")], args=["t2|b", 60_000, "{}", 2, 2, "t2", "t2|deferred"]
    ) == ["held", "t1"]
    state, left = start(keys=ks, args=["t1|c", 60_000, "{}", 2, 2, "t1", "t1|deferred"])
    assert state == "alive" and 59_000 < int(left) <= 60_000  # the same task id, still alive
    assert (
        finish(
            keys=[runs, hist, keys.executed("t1"), lock, keys.last_runs, running],
            args=["t1", '{"s": "done"}', 2, "succeeded", 60_000, "succeeded:vendors", "{}", "t1|a"],
        )
        == 1
    )
    assert r.get(lock) is None and r.get(keys.executed("t1")) == "succeeded"
    assert r.zcard(running) == 0
    assert start(keys=ks, args=["t1|d", 60_000, "{}", 2, 2, "t1", "t1|deferred"]) == [
        "done"
    ]  # finished
    assert r.hget(runs, "t1") == '{"s": "done"}' and r.lrange(hist, 0, -1) == ["t1"]
    assert save(keys=[runs, hist], args=["t2", "{}", 2]) == 1
    assert save(keys=[runs, hist], args=["t3", "{}", 2]) == 1
    assert r.lrange(hist, 0, -1) == ["t3", "t2"] and r.hget(runs, "t1") is None
    r.set(keys.company("acme"), '{"erp": "xero"}')
    r.hset(keys.projects("acme"), "p1", "{}")
    r.hset(keys.rate_limit_overrides, mapping={"xero": "L", "company:acme": "C"})
    fact_keys = [
        keys.executed("t1"),
        runs,
        keys.company("acme"),
        keys.settings("acme"),
        keys.projects("acme"),
        keys.rate_limit_overrides,
        keys.cursor("acme", "vendors", None),
        keys.paused,
        keys.job_cost_optouts("acme"),
    ]
    fact_args = ["t2", "p1", "company:acme", "acme"]

    def read() -> RunFacts:
        return RunFacts.parse(facts(keys=fact_keys, args=fact_args))

    got = read()
    assert (got.executed, got.previous, got.company, got.settings) == (
        True,
        "{}",
        '{"erp": "xero"}',
        None,
    )
    assert (got.project_exists, got.erp_override, got.company_override) == (True, "L", "C")
    assert got.watermarks is None
    assert abs(got.time_seconds - r.time()[0]) <= 1 and 0 <= got.time_micros < 1_000_000
    assert (got.paused, got.opted_out) == (None, False)
    r.hset(keys.paused, "*", '{"by": "ops"}')  # the fleet's pause counts for every company
    r.sadd(keys.job_cost_optouts("acme"), "p1")
    assert (read().paused, read().opted_out) == ('{"by": "ops"}', True)
    r.hset(keys.paused, "acme", '{"by": "al"}')  # the company's own comes first
    assert read().paused == '{"by": "al"}'
    r.set(keys.company("acme"), "not json")
    assert read().erp_override is None


def test_the_company_concurrency_cap_heartbeat_release_and_a_killed_runs_lock(
    r: redis.Redis, keys: KeySpace
) -> None:
    start, beat = lua.load(r, "run_start"), lua.load(r, "run_heartbeat")
    release, finish = lua.load(r, "run_release"), lua.load(r, "run_finish")
    runs, hist, running = keys.runs("acme"), keys.history("acme"), keys.running("acme")

    def lock(kind: str) -> str:
        return keys.run_lock("acme", kind, None)

    def at(kind: str) -> list[str]:
        return [lock(kind), runs, hist, running, keys.executed(kind)]

    def started(task: str) -> object:
        args: list[str | int] = [f"{task}|1", 60_000, "{}", 9, 2, task, f"{task}|deferred"]
        return start(keys=at(task), args=args)

    assert started("a") == ["ok"]
    assert started("b") == ["ok"]
    assert started("c") == ["busy", "2"]
    assert r.get(lock("c")) is None
    assert beat(keys=[lock("a"), running], args=["a|1", 90_000, "a"]) == 1
    assert r.pttl(lock("a")) > 60_000
    assert beat(keys=[lock("a"), running], args=["a|stale", 90_000, "a"]) == 0
    assert release(keys=[lock("b"), running], args=["b|1", "b"]) == 1
    assert started("c") == ["ok"]
    r.zadd(running, {"c": 0})  # c's worker died: its heartbeat expiry passed
    assert started("d") == ["ok"]
    assert (
        finish(
            keys=[runs, hist, keys.executed("a"), lock("a"), keys.last_runs, running],
            args=["a", "{}", 9, "failed", 60_000, "failed:x", "{}", "*"],
        )
        == 1
    )
    assert r.get(lock("a")) is None  # '*': whichever run of this task id held it


def _start_args(lock: RunLock) -> list[str | int]:
    """run_start.lua's arguments for ``lock``, as the runner passes them."""
    parked = RunLock.parked(lock.task_id).format()
    return [lock.format(), 60_000, "{}", 9, 9, lock.task_id, parked]


@pytest.mark.parametrize(
    "value", ["t1|a1b2", "sync:acme:vendors:-:1|x", "odd|task|tok", "t|deferred"]
)
def test_the_scripts_read_a_locks_task_id_as_run_lock_parse_does(
    r: redis.Redis, keys: KeySpace, value: str
) -> None:
    start, finish = lua.load(r, "run_start"), lua.load(r, "run_finish")
    lock, runs, hist, running = (
        keys.run_lock("acme", "vendors", None),
        keys.runs("acme"),
        keys.history("acme"),
        keys.running("acme"),
    )
    owner = RunLock.parse(value).task_id
    r.set(lock, value, px=60_000)
    other = RunLock.new("someone-else")
    reply = start(keys=[lock, runs, hist, running, keys.executed("x")], args=_start_args(other))
    assert StartReply.parse(reply) == StartReply(StartState.HELD, holder=owner)

    def finish_any(task_id: str) -> None:
        finish(
            keys=[runs, hist, keys.executed(task_id), lock, keys.last_runs, running],
            args=[task_id, "{}", 9, "failed", 60_000, "failed:vendors", "{}", "*"],
        )

    finish_any(f"{owner}x")  # another task id's finish leaves it alone
    assert r.get(lock) == value
    finish_any(owner)  # '*': whichever run of the task id RunLock.parse names
    assert r.get(lock) is None


def test_a_parked_lock_is_the_runner_built_value_and_only_its_own_task_takes_it_back(
    r: redis.Redis, keys: KeySpace
) -> None:
    start, park = lua.load(r, "run_start"), lua.load(r, "run_park")
    lock, running = keys.run_lock("acme", "vendors", None), keys.running("acme")
    ks = [lock, keys.runs("acme"), keys.history("acme"), running]
    first = RunLock.new("t1")
    assert StartReply.parse(start(keys=[*ks, keys.executed("t1")], args=_start_args(first))) == (
        StartReply(StartState.OK)
    )
    again = StartReply.parse(
        start(keys=[*ks, keys.executed("t1")], args=_start_args(RunLock.new("t1")))
    )
    assert again.state is StartState.ALIVE and 59_000 < again.alive_ms <= 60_000
    parked = RunLock.parked("t1").format()
    assert park(keys=[lock, running], args=[first.format(), "t1", 90_000, parked]) == 1
    assert r.get(lock) == parked and r.zcard(running) == 0
    assert park(keys=[lock, running], args=[first.format(), "t1", 90_000, parked]) == 0
    other = start(keys=[*ks, keys.executed("t2")], args=_start_args(RunLock.new("t2")))
    assert StartReply.parse(other) == StartReply(StartState.HELD, holder="t1")
    back = RunLock.new("t1")
    assert StartReply.parse(start(keys=[*ks, keys.executed("t1")], args=_start_args(back))) == (
        StartReply(StartState.OK)
    )
    assert r.get(lock) == back.format()


def test_ratelimit_take_grants_the_burst_then_reserves_then_refuses(
    r: redis.Redis, keys: KeySpace
) -> None:
    take = lua.load(r, "ratelimit_take")
    key = keys.rate_limit("acme")
    grants = [take(keys=[key], args=[1, 2, 1.5, 0, 0]) for _ in range(4)]
    assert [g[0] for g in grants] == [1, 1, 1, 0]
    assert float(grants[0][1]) == 0 and 0.9 < float(grants[2][1]) <= 1.0
    assert float(grants[3][1]) > 1.5 and grants[3][2] == "0"  # polling: nothing reserved


def test_ratelimit_waiters_get_tickets_one_interval_apart_and_newcomers_queue_behind(
    r: redis.Redis, keys: KeySpace
) -> None:
    take = lua.load(r, "ratelimit_take")
    key = keys.rate_limit("acme")
    assert take(keys=[key], args=[1, 1, 0.2, 0, 1])[0] == 1  # the burst
    waiters = [take(keys=[key], args=[1, 1, 0.2, 0, 1]) for _ in range(3)]
    assert [w[0] for w in waiters] == [0, 0, 0]
    tickets = [float(w[2]) for w in waiters]
    assert [round(b - a, 3) for a, b in itertools.pairwise(tickets)] == [1.0, 1.0]
    newcomer = take(keys=[key], args=[1, 1, 0.2, 0, 1])
    assert newcomer[0] == 0 and round(float(newcomer[2]) - tickets[-1], 3) == 1.0
    # Back before its turn (its countdown was capped, or another worker's clock is fast): it
    # keeps its ticket instead of going to the end of the queue.
    early = take(keys=[key], args=[1, 1, 0.2, tickets[1], 1])
    assert early[0] == 0 and float(early[2]) == tickets[1]
    # A token is free now but waiters are queued: a newcomer still queues behind them, while
    # the waiter whose turn it is takes the token.
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    r.hset(key, mapping={"tokens": "1", "ts": str(now), "queue": str(now + 5)})
    assert take(keys=[key], args=[1, 1, 0.2, 0, 1])[0] == 0
    r.hset(key, mapping={"tokens": "1", "ts": str(now)})
    assert take(keys=[key], args=[1, 1, 0.2, now, 1])[0] == 1


def test_sandbox_scripts_add_page_and_enter_calls(r: redis.Redis, keys: KeySpace) -> None:
    add, page = lua.load(r, "sandbox_add_record"), lua.load(r, "sandbox_page")
    enter = lua.load(r, "sandbox_enter")
    meta, jobs, idx = (
        keys.erp_meta("acme"),
        keys.erp("acme", "jobs"),
        keys.erp_index("acme", "jobs"),
    )
    assert [
        add(keys=[meta, jobs, idx], args=[i, json.dumps({"id": i})]) for i in ("J1", "J2", "J1")
    ] == [1, 2, 3]
    assert page(keys=[idx, jobs], args=[1, 10]) == ["2", '{"id": "J2"}', "3", '{"id": "J1"}']
    r.hset(meta, mapping={"config": "{}", "fail_next": 1})
    calls = keys.erp_calls("acme")
    assert enter(keys=[meta, jobs, calls], args=["J1", 2]) == ["{}", 1, 0, 1]
    assert enter(keys=[meta, jobs, calls], args=["nope", 2]) == ["{}", 0, 0, 0]
    enter(keys=[meta, jobs, calls], args=["-", 2])
    assert r.llen(calls) == 2


def test_due_present_says_which_members_are_in_the_index(r: redis.Redis, keys: KeySpace) -> None:
    r.zadd(keys.due, {"acme:vendors": 5.0, "acme:jobs": 7.0})
    present = lua.load(r, "due_present")
    assert present(keys=[keys.due], args=["acme:jobs", "acme:payments", "acme:vendors"]) == "101"
