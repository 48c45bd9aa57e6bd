"""The run lock's value and what ``run_start.lua`` answers when asked for the lock.

A run lock (``KeySpace.run_lock``) holds ``<task id>|<run token>``: the task id says whose run
it is (a redelivery of the same task id waits for its live twin instead of being skipped), the
token tells one delivery's run from another's (a run releases only the lock it set). A deferred
run *parks* the lock as ``<task id>|deferred`` so that only its own task id takes it back.

Every such value is built here (``RunLock``) and nowhere else; the Lua scripts are handed the
values whole and only read them. The one reading they do themselves, the task id of a held
lock (everything before the last ``|``, in ``run_start.lua`` and ``run_finish.lua``), is the
rule ``RunLock.parse`` spells, and ``tests/test_lua.py`` holds the two to agreeing (the
scripts also read a value with no ``|`` at all, which nothing here writes, as a bare task id;
``parse`` refuses it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from erp_sync.errors import WorkerError

SEP: Final = "|"
PARKED: Final = "deferred"  # the token of a lock parked by its own run's deferral
# ``run_finish.lua``'s lock argument for a run whose value is unknown (its worker was killed):
# whichever run of this task id holds the lock. ``NO_LOCK``: the run never took one.
ANY_RUN: Final = "*"
NO_LOCK: Final = ""


@dataclass(frozen=True)
class RunLock:
    """One run's lock value: whose task it is and which delivery of it set the lock."""

    task_id: str
    token: str

    def __post_init__(self) -> None:
        # The token ends the value, so a task id may contain SEP but a token may not: the
        # value then splits back into exactly these two parts (``parse``).
        if not self.task_id or not self.token or SEP in self.token:
            raise ValueError(f"not a run lock: task id {self.task_id!r}, token {self.token!r}")

    @classmethod
    def new(cls, task_id: str) -> RunLock:
        """A fresh lock for one delivery of ``task_id`` (a token no other delivery has)."""
        return cls(task_id, uuid.uuid4().hex[:12])

    @classmethod
    def parked(cls, task_id: str) -> RunLock:
        """The value a deferred run of ``task_id`` leaves holding the lock while it waits."""
        return cls(task_id, PARKED)

    @classmethod
    def parse(cls, value: str) -> RunLock:
        """The lock stored as ``value``; ``ValueError`` for anything ``format`` never made."""
        task_id, sep, token = value.rpartition(SEP)
        if not sep:
            raise ValueError(f"not a run lock (no {SEP!r}): {value!r}")
        return cls(task_id, token)

    def format(self) -> str:
        """The value stored in the lock key (and compared by the scripts)."""
        return f"{self.task_id}{SEP}{self.token}"


# The lock a finishing run gives back: its own, any of its task id's (``ANY_RUN``), or none.
FinishLock = RunLock | Literal["*"] | None


def finish_arg(lock: FinishLock) -> str:
    """``run_finish.lua``'s lock argument (ARGV[8]) for ``lock``."""
    return lock.format() if isinstance(lock, RunLock) else lock or NO_LOCK


class StartState(StrEnum):
    """What ``run_start.lua`` did: ``OK`` took the lock; every other state took nothing."""

    OK = "ok"
    DONE = "done"  # the task id finished meanwhile: a duplicate
    HELD = "held"  # another task id runs (or waits, parked, holding) this sync
    ALIVE = "alive"  # this task id's earlier delivery still runs, its heartbeat alive
    BUSY = "busy"  # the company's concurrency cap is reached


# How many values follow the state in each reply (``StartReply.parse`` checks it).
_DETAILS = {
    StartState.OK: 0,
    StartState.DONE: 0,
    StartState.HELD: 1,
    StartState.ALIVE: 1,
    StartState.BUSY: 1,
}


@dataclass(frozen=True)
class StartReply:
    """``run_start.lua``'s reply, named; each detail is meaningful in its own state only."""

    state: StartState
    holder: str = ""  # HELD: the task id that holds the lock
    alive_ms: int = 0  # ALIVE: how long the live twin's heartbeat holds the lock still
    running: int = 0  # BUSY: how many of the company's syncs run already

    @classmethod
    def parse(cls, reply: object) -> StartReply:
        """The one reading of the reply: a state the runner does not know, or the wrong
        details for it, is refused (a script and a runner out of step must not run a sync
        that may not hold its lock)."""
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], str):
            raise WorkerError(f"run_start.lua replied {reply!r}: not a list opening with a state")
        try:
            state = StartState(reply[0])
        except ValueError:
            raise WorkerError(f"run_start.lua replied an unknown state: {reply!r}") from None
        detail = reply[1:]
        if len(detail) != _DETAILS[state] or not all(isinstance(v, str) for v in detail):
            raise WorkerError(f"run_start.lua replied {reply!r}: the wrong details for {state}")
        if state is StartState.HELD:
            return cls(state, holder=detail[0])
        try:
            number = int(detail[0]) if detail else 0
        except ValueError:
            raise WorkerError(f"run_start.lua replied {reply!r}: not a number") from None
        if state is StartState.ALIVE:
            return cls(state, alive_ms=number)
        return cls(state, running=number)
