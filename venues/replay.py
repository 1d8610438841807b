"""The replay clock: feeds market events to the engine in exchange time, stepped or at a speed-up.

Two ways to drive it, because tests and long runs need different things:

* **step-driven** (`speed == 0`): nothing happens until someone calls `advance(seconds)`,
  `advance_to(ts)` or `step_until(predicate)`. Tests are then deterministic and never sleep.
* **real time** (`run(speed, stop)`): exchange time advances `speed` times faster than the wall clock
  (1x, 100x, …). Events are processed in chunks with an `await` between them so RPCs interleave; if
  the simulator cannot keep up, `lag` grows and `stats()` reports the speed-up actually achieved.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterator

from venues.marketdata import MarketEvent

__all__ = ["MarketReplay"]

_NS = 1_000_000_000


class MarketReplay:
    """Merges per-market event streams on one clock and pushes them into `sink(symbol, event)`."""

    def __init__(self, sources: dict[str, Iterator[MarketEvent]],
                 sink: Callable[[str, MarketEvent], None],
                 on_time: Callable[[int], None] | None = None) -> None:
        self._sink = sink
        self._on_time = on_time
        self._heap: list[tuple[int, int, str, MarketEvent, Iterator[MarketEvent]]] = []
        self._seq = 0
        for symbol, it in sources.items():
            self._push(symbol, it)
        self.now_ns = self._heap[0][0] if self._heap else 0
        self.events = 0
        self.lag_ns = 0
        self.max_lag_ns = 0
        self.wall_s = 0.0
        self.sim_ns = 0
        self.after_batch: Callable[[], None] | None = None
        self.speed = 0.0

    def _push(self, symbol: str, it: Iterator[MarketEvent]) -> None:
        ev = next(it, None)
        if ev is not None:
            self._seq += 1
            heapq.heappush(self._heap, (ev.ts, self._seq, symbol, ev, it))

    @property
    def exhausted(self) -> bool:
        return not self._heap

    def peek_ts(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def step(self) -> MarketEvent | None:
        """Process exactly one event (the next in exchange time)."""
        if not self._heap:
            return None
        ts, _, symbol, ev, it = heapq.heappop(self._heap)
        self._push(symbol, it)
        if ts > self.now_ns:
            self.now_ns = ts
        self.events += 1
        self._sink(symbol, ev)
        return ev

    def advance_to(self, ts_ns: int, *, max_events: int | None = None) -> int:
        """Process every event stamped at or before `ts_ns` (at most `max_events`) and move the clock."""
        n = 0
        heap = self._heap
        while heap and heap[0][0] <= ts_ns:
            if max_events is not None and n >= max_events:
                return n
            self.step()
            n += 1
        if ts_ns > self.now_ns:
            self.now_ns = ts_ns
            if self._on_time:
                self._on_time(ts_ns)
        return n

    def advance(self, seconds: float) -> int:
        return self.advance_to(self.now_ns + int(seconds * _NS))

    def step_until(self, predicate: Callable[[], bool], *, max_seconds: float = 60.0) -> bool:
        """Step event by event until `predicate()` holds; False if `max_seconds` of market passed first."""
        deadline = self.now_ns + int(max_seconds * _NS)
        while not predicate():
            nxt = self.peek_ts()
            if nxt is None or nxt > deadline:
                self.advance_to(deadline)
                return predicate()
            self.step()
        return True

    async def run(self, speed: float, stop: asyncio.Event, *, chunk: int = 256) -> None:
        """Replay in real time at `speed`x until `stop` is set (or the data ends)."""
        if speed <= 0:
            raise ValueError("run() needs speed > 0; use advance() for step-driven replay")
        self.speed = speed
        wall0 = time.monotonic()
        sim0 = self.now_ns
        while not stop.is_set():
            elapsed = time.monotonic() - wall0
            target = sim0 + int(elapsed * speed * _NS)
            if self.now_ns > target:  # someone advanced the clock by hand: carry on from there
                sim0 += self.now_ns - target
                target = self.now_ns
            n = self.advance_to(target, max_events=chunk)
            self.wall_s = elapsed
            self.sim_ns = self.now_ns - sim0
            nxt = self.peek_ts()
            self.lag_ns = max(0, target - nxt) if nxt is not None and nxt <= target else 0
            self.max_lag_ns = max(self.max_lag_ns, self.lag_ns)
            if self.after_batch is not None:
                self.after_batch()
            if n >= chunk:
                await asyncio.sleep(0)  # behind schedule: yield to RPCs, then catch up
                continue
            if nxt is None:
                await stop.wait()
                return
            delay = (nxt - target) / _NS / speed
            await asyncio.sleep(min(max(delay, 0.0), 0.05))

    def stats(self) -> dict[str, float | int]:
        achieved = (self.sim_ns / _NS) / self.wall_s if self.wall_s > 0 else 0.0
        return {
            "events": self.events,
            "now_ms": self.now_ns // 1_000_000,
            "achieved_speed": achieved,
            "lag_ms": self.lag_ns / 1e6,  # exchange-time ms behind schedule (wall = / speed)
            "max_lag_ms": self.max_lag_ns / 1e6,
            "max_lag_wall_ms": self.max_lag_ns / 1e6 / self.speed if self.speed else 0.0,
        }
