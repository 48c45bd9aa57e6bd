"""The beat engine's tuning: batch sizes, budgets and timeouts (defaults are what runs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    seconds_per_hour: float = 3600.0
    lease_seconds: float = 3.0
    due_batch: int = 250  # entries per dispatch script call
    message_batch: int = 5000  # messages per dispatch script call (an entry is never split)
    budget: float = 0.05  # seconds of dispatching before the feed is checked again
    max_block: float = 1.0  # longest wait on the feed when nothing is due
    change_batch: int = 500
    sweep_seconds: float = 60.0  # one full pass of the schedule check over every company
    log_dispatches: bool = True
