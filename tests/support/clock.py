"""A clock a test or benchmark sets by hand (schedule code takes time as an argument)."""

from __future__ import annotations


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
