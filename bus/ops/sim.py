"""Simulation: the real actors on the real bus, over a recorded market, in virtual time.

The venue is the paper exchange stepped in-process; the actors share a `SimClock` that is the market's
exchange time. The driver repeats: wait until the system is quiet (every message published has been
taken by every actor that consumes it, no handler is running, no venue event is waiting), then move the
market to the next thing that can happen — an intent's arrival, an actor's timer, or the first fill of one
of our orders on the way — and move the clock with it. A strategy with a 13 s budget costs a few
milliseconds of wall time, and the same intents over the same data and seed give the same fills.

Exactness holds as long as executions do not race each other for the same liquidity at the same
instant (two intents reacting to fills at one market timestamp may reach the venue in either order).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bus.clock import SimClock
from bus.settings import BusSettings
from bus.ops.system import System, SystemConfig
from decimal import Decimal

from messages import ExecutionCompleted, IntentRejected, Message, RiskLimits, SubmitIntent

__all__ = ["Activity", "Simulation", "Arrival"]

NS = 1_000_000_000

UNGATED = RiskLimits(
    max_intent_notional=Decimal("1000000000000"),
    max_open_notional=Decimal("1000000000000"),
    max_orders_per_second=1_000_000,
    balance_check=False,
)
"""A simulation replays what was decided once (and runs on virtual time, while the order-rate budget counts
wall-clock seconds): by default it re-runs intents without the risk gate. Pass real limits to see which
of a log's intents today's limits would deny."""


class Activity:
    """Counts what is in flight in this process: messages published but not yet taken by every local
    consumer, and work items queued or running in actor hosts."""

    def __init__(self) -> None:
        self._consumers: dict[str, int] = {}
        self.expected = 0
        self.delivered = 0
        self.busy = 0
        self.venue_streams: list[Any] = []
        self._changed = asyncio.Event()

    def add_consumer(self, host: Any) -> None:
        for kind in host.actor.consumes:
            self._consumers[kind.kind] = self._consumers.get(kind.kind, 0) + 1

    def published(self, kind: str) -> None:
        self.expected += self._consumers.get(kind, 0)
        self._changed.set()

    def begin(self, *, delivered: bool) -> None:
        self.busy += 1
        if delivered:
            self.delivered += 1
        self._changed.set()

    def end(self) -> None:
        self.busy -= 1
        self._changed.set()

    def quiet(self) -> bool:
        if self.busy or self.delivered < self.expected:
            return False
        return all(not stream.items for exchange in self.venue_streams for stream in exchange._streams.values())

    async def idle(self, timeout: float = 30.0) -> None:
        """Until quiet, and still quiet after every ready task had its turn."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.quiet():
                for _ in range(5):
                    await asyncio.sleep(0)
                if self.quiet():
                    return
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"simulation never went quiet: busy={self.busy} expected={self.expected} delivered={self.delivered}"
                )
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.01))
            except asyncio.TimeoutError:
                pass


@dataclass(order=True)
class Arrival:
    at_ns: int
    intent: SubmitIntent = field(compare=False)


class Simulation:
    """`async with Simulation(paper_config) as sim: outcomes = await sim.run(arrivals)`."""

    def __init__(
        self,
        paper_config: Any = None,
        *,
        settings: BusSettings | None = None,
        actor_options: dict[str, dict[str, Any]] | None = None,
        max_steps: int = 1_000_000,
        risk_limits: RiskLimits = UNGATED,
    ) -> None:
        from venues.config import PaperVenueConfig
        from venues.simulator import PaperVenue

        config = paper_config or PaperVenueConfig()
        # Step-driven and finite: the driver owns time; a looping market would never let a run end.
        self.paper_config = _replace(config, speed=0.0, loop=False)
        self.venue = PaperVenue(self.paper_config)
        self.clock = SimClock(self.venue.engine.now_ns)
        self.activity = Activity()
        options = {
            "pricer": {"max_age_s": 1e9},  # the book is as fresh as the virtual clock says
            "reconciler": {"poll_interval_s": 30.0, "confirm_interval_s": 0.5},
            "placer": {"resolve_interval_s": 0.25, "absent_grace_s": 5.0},
        }
        for name, extra in (actor_options or {}).items():
            options.setdefault(name, {}).update(extra)
        self.system = System(
            SystemConfig(
                risk_limits=risk_limits,
                paper_venue=False,
                venue_options={"paper": {"engine": self.venue}},
                actor_options=options,
                settings=settings,
                reconcile_at_start=False,  # a fresh simulated venue has no orders of ours
            ),
            clock=self.clock,
            activity=self.activity,
        )
        self.max_steps = max_steps
        self.steps = 0
        self.outcomes: dict[str, ExecutionCompleted | IntentRejected] = {}
        self.messages: list[Message] = []

    async def __aenter__(self) -> Simulation:
        await self.system.start()
        assert self.system.bus is not None
        await self.system.bus.subscribe("exec.>", self._observe)
        await self.system.bus.nc.flush()
        self.activity.venue_streams = self.system.venue_pool.opened()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.system.stop()

    async def _observe(self, msg: Message) -> None:
        self.messages.append(msg)
        if isinstance(msg, ExecutionCompleted) or (isinstance(msg, IntentRejected) and not msg.duplicate):
            self.outcomes.setdefault(msg.intent_id, msg)

    async def run(self, arrivals: Iterable[Arrival]) -> dict[str, ExecutionCompleted | IntentRejected]:
        """Submit each intent at its market time and drive the market until every one has an outcome."""
        bus = self.system.bus
        assert bus is not None
        pending = sorted(arrivals)
        wanted = {a.intent.intent_id for a in pending}
        while True:
            await self.activity.idle()
            self.activity.venue_streams = self.system.venue_pool.opened()
            now = self.clock.now_ns()
            if pending and pending[0].at_ns <= now:
                arrival = pending.pop(0)
                await bus.publish(_stamped(arrival.intent, now))
                continue
            if not pending and wanted <= self.outcomes.keys():
                return {k: self.outcomes[k] for k in wanted}
            deadlines = [d for d in (h.next_deadline() for h in self.system.hosts.values()) if d is not None]
            candidates = deadlines + ([pending[0].at_ns] if pending else [])
            target = min(candidates) if candidates else now + NS
            if target <= now:
                continue  # a timer is due: its host will take it on the next turn
            self.steps += 1
            if self.steps > self.max_steps:
                raise RuntimeError(f"simulation did not finish in {self.max_steps} steps")
            result = self.venue.control("advance_to", {"until_ns": target, "stop_on_fill": True})
            self.clock.advance_to(target if not result["filled"] else max(result["now_ns"], now))
            if result["exhausted"] and not candidates:
                missing = wanted - self.outcomes.keys()
                raise RuntimeError(f"the recorded market ended with executions still open: {sorted(missing)}")


def _stamped(intent: SubmitIntent, now_ns: int) -> SubmitIntent:
    import msgspec

    return msgspec.structs.replace(intent, ts_event=now_ns)


def _replace(config: Any, **changes: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(config, **changes)

