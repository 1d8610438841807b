"""Clocks are injected: actors ask `clock.now_ns()`; nothing reads the time behind their back."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "WallClock", "SimClock"]


class Clock(Protocol):
    def now_ns(self) -> int:
        """Nanoseconds since the epoch. Deadlines are absolute values of this clock."""
        ...

    async def sleep_until(self, at_ns: int | None, wakeup: asyncio.Event) -> None:
        """Return at `at_ns` (never, if None), or earlier when `wakeup` is set or time jumps."""
        ...


class WallClock:
    """The system clock. Deadlines are stored as absolute epoch nanoseconds, so they survive a restart."""

    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep_until(self, at_ns: int | None, wakeup: asyncio.Event) -> None:
        delay = 3600.0 if at_ns is None else max((at_ns - self.now_ns()) / 1e9, 0.0005)
        try:
            await asyncio.wait_for(wakeup.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass


class SimClock:
    """Virtual time for simulations: it moves only when the driver says so (`advance_to`), so a run over a
    recorded market takes as long as the work in it, not as long as the market."""

    def __init__(self, start_ns: int) -> None:
        self._now = start_ns
        self._moved = asyncio.Event()

    def now_ns(self) -> int:
        return self._now

    def advance_to(self, at_ns: int) -> None:
        if at_ns > self._now:
            self._now = at_ns
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()

    async def sleep_until(self, at_ns: int | None, wakeup: asyncio.Event) -> None:
        if at_ns is not None and at_ns <= self._now:
            return
        moved = self._moved
        waiters = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(moved.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
