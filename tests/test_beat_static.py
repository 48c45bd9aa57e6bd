"""Celery users' own periodic tasks (``app.conf.beat_schedule``) run under the leader lease.

In-process: the engine with a clock the test sets, against a real redis-server. Then real
``celery beat`` processes and a real worker running an app that adds its own entry: only the
leader sends it, each run once, and a SIGKILLed leader's successor carries on.
"""

from __future__ import annotations

import base64
import json
import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.schedules import crontab

from config.keys import KeySpace
from erp_sync.beat.engine import BeatEngine, EngineConfig, pid_of
from erp_sync.beat.lease import holder_node
from erp_sync.beat.static import run_task_id
from tests.support.clock import Clock
from tests.support.procs import CELERY, ROOT, Proc, wait_until
from tests.support.redisproc import RedisServer

T0 = 1_800_000_000.0  # a whole minute, so crontab slots are easy to name
ENTRY = {
    "task": "app.cleanup",
    "schedule": 60.0,
    "args": (7,),
    "kwargs": {"deep": True},
    "options": {"queue": "alerts"},
}


@pytest.fixture
def make_engine(real: redis.Redis, keys: KeySpace) -> Iterator[Callable[..., BeatEngine]]:
    engines: list[BeatEngine] = []

    def build(clock: Clock, node: str, schedule: dict[str, object] | None = None) -> BeatEngine:
        app = Celery("test", set_as_current=False)
        app.conf.beat_schedule = schedule if schedule is not None else {"cleanup": ENTRY}
        engine = BeatEngine(
            app, real, keys, EngineConfig(lease_seconds=2, max_block=0.01), clock=clock, node=node
        )
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


def sent(client: redis.Redis, keys: KeySpace, queue: str = "alerts") -> list[dict[str, object]]:
    """The queued messages, oldest first, with their task ids, args and kwargs decoded."""
    out = []
    for raw in reversed(client.lrange(keys.queue(queue), 0, -1)):
        message = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append(
            {
                "id": message["headers"]["id"],
                "task": message["headers"]["task"],
                "args": args,
                "kwargs": kwargs,
            }
        )
    return out


@pytest.mark.integration
def test_a_static_entry_runs_once_per_period_and_only_from_the_leader(
    real: redis.Redis, keys: KeySpace, make_engine: Callable[..., BeatEngine]
) -> None:
    clock = Clock(T0)
    leader, standby = make_engine(clock, "a"), make_engine(clock, "b")
    leader.step()
    standby.step()
    assert sent(real, keys) == []  # a new entry's period starts at the first look
    clock.t = T0 + 59
    leader.step()
    assert sent(real, keys) == []
    clock.t = T0 + 60
    for _ in range(3):
        leader.step()
        standby.step()
    assert sent(real, keys) == [
        {
            "id": run_task_id("cleanup", T0 + 60),
            "task": "app.cleanup",
            "args": [7],
            "kwargs": {"deep": True},
        }
    ]
    clock.t = T0 + 120
    leader.step()
    assert [m["id"] for m in sent(real, keys)] == [
        run_task_id("cleanup", T0 + 60),
        run_task_id("cleanup", T0 + 120),
    ]


@pytest.mark.integration
def test_after_a_failover_the_new_leader_continues_and_an_overdue_entry_runs_once(
    real: redis.Redis, keys: KeySpace, make_engine: Callable[..., BeatEngine]
) -> None:
    clock = Clock(T0)
    first, second = make_engine(clock, "a"), make_engine(clock, "b")
    first.step()
    clock.t = T0 + 60
    first.step()
    first.close()  # steps down; the other beat takes over
    clock.t = T0 + 60 + 600  # ten periods missed
    for _ in range(3):
        second.step()
    clock.t = T0 + 60 + 660
    second.step()
    assert [m["id"] for m in sent(real, keys)] == [
        run_task_id("cleanup", T0 + 60),
        run_task_id("cleanup", T0 + 660),
        run_task_id("cleanup", T0 + 720),
    ]


@pytest.mark.integration
def test_a_paused_ex_leader_sends_nothing_when_it_resumes(
    real: redis.Redis, keys: KeySpace, make_engine: Callable[..., BeatEngine]
) -> None:
    clock = Clock(T0)
    old, new = make_engine(clock, "a"), make_engine(clock, "b")
    old.step()
    real.delete(keys.beat_leader)  # old's lease expired while it was paused
    new.step()
    clock.t = T0 + 60
    old.send_static()  # resumes believing it leads: fenced out by the script
    assert old.lease.token is None and sent(real, keys) == []
    new.step()
    assert [m["id"] for m in sent(real, keys)] == [run_task_id("cleanup", T0 + 60)]


@pytest.mark.integration
def test_crontab_entries_follow_the_engine_clock_and_route_by_the_app(
    real: redis.Redis, keys: KeySpace, make_engine: Callable[..., BeatEngine]
) -> None:
    clock = Clock(T0 + 10)
    engine = make_engine(
        clock, "a", {"every-5-min": {"task": "app.report", "schedule": crontab(minute="*/5")}}
    )
    engine.step()
    for minute in range(1, 11):
        clock.t = T0 + minute * 60 + 1
        engine.step()
    # Two 5-minute boundaries passed (the default queue is the app's task_default_queue).
    assert [m["id"] for m in sent(real, keys, "celery")] == [
        run_task_id("every-5-min", T0 + 5 * 60 + 1),
        run_task_id("every-5-min", T0 + 10 * 60 + 1),
    ]


APP = textwrap.dedent('''
    """A Celery user's app: erp-sync's app plus a periodic task of its own."""
    import os

    import redis

    from worker import app

    app.conf.beat_schedule = {
        "tick": {"task": "staticapp.tick", "schedule": 0.5, "options": {"queue": "company"}},
    }


    @app.task(name="staticapp.tick", bind=True)
    def tick(self):
        client = redis.Redis.from_url(os.environ["ERP_SYNC_REDIS_URL"])
        client.rpush(os.environ["ERP_SYNC_KEY_PREFIX"] + ":test:ticks", self.request.id)
        client.close()
''')


@pytest.mark.integration
@pytest.mark.processes
def test_real_beats_send_the_apps_own_entry_once_per_run_across_a_leader_kill(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "staticapp.py").write_text(APP)
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_BEAT_LEASE_SECONDS": "1.5",
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
    }
    celery = [*CELERY[:-1], "staticapp"]
    client, keys = redis_server.client(), KeySpace(prefix)
    ticks = f"{prefix}:test:ticks"
    procs = [Proc(f"beat-{n}", [*celery, "beat", "-l", "INFO"], env, tmp_path) for n in (1, 2)]
    procs.append(
        Proc(
            "worker",
            [
                *celery,
                "worker",
                "-Q",
                "company",
                "-P",
                "threads",
                "-c",
                "2",
                "-n",
                "static@%h",
                "-l",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            env,
            tmp_path,
        )
    )
    try:
        wait_until(
            lambda: client.llen(ticks) >= 3,
            60,
            f"the entry never ran three times:\n{procs[0].output()[-2000:]}",
        )
        node = holder_node(client.get(keys.beat_leader))
        assert node is not None
        leader = next(p for p in procs if p.pid == pid_of(node))
        leader.kill_group()
        before = client.llen(ticks)
        wait_until(
            lambda: client.llen(ticks) >= before + 3,
            60,
            "the new leader never carried the entry on",
        )
        follower = next(p for p in procs[:2] if p is not leader)
        assert "sent beat_schedule entry=tick" in follower.output()
    finally:
        for proc in procs:
            proc.signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()
    ran = [str(run) for run in client.lrange(ticks, 0, -1)]
    assert len(ran) == len(set(ran)), "a run was executed twice"
    assert all(run.startswith("beat:tick:") for run in ran)
