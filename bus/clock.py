"""Clocks are injected: actors ask `clock.now_ns()`; nothing reads the time behind their back."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "WallClock"]


class Clock(Protocol):
    def now_ns(self) -> int:
        """Nanoseconds since the epoch. Deadlines are absolute values of this clock."""
        ...


class WallClock:
    """The system clock. Deadlines are stored as absolute epoch nanoseconds, so they survive a restart."""

    def now_ns(self) -> int:
        return time.time_ns()
