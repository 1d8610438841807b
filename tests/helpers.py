"""Factories and waiting helpers shared by the tests (no fixtures with magic: plain functions)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from bus.bus import Bus
from bus.settings import BusSettings
from messages import ExecutionCompleted, Message, OrderFilled, SubmitIntent

T = TypeVar("T", bound=Message)


def fast_settings(**overrides: Any) -> BusSettings:
    """Short lease TTL so replicas rebalance within a second in tests."""
    values: dict[str, Any] = {"lease_ttl_s": 1.0, "ack_wait_s": 5.0}
    values.update(overrides)
    return BusSettings(**values)


_counter = 0


def new_intent(**overrides: Any) -> SubmitIntent:
    global _counter
    _counter += 1
    values: dict[str, Any] = {
        "intent_id": f"t{time.time_ns() % 10**12}-{_counter}",
        "venue": "paper",
        "symbol": "BTC/USDT",
        "side": "buy",
        "qty": Decimal("0.01"),
    }
    values.update(overrides)
    return SubmitIntent(**values)


async def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll `condition` (plain or async) until it returns something truthy; fail the test after `timeout`.
    The one place tests wait by polling: for state that has no event to wait on (KV leases, the server's
    duplicate window)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Recorder:
    """Every data-plane message seen live on the bus, for assertions."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    async def attach(self, bus: Bus, pattern: str = "exec.>") -> Recorder:
        async def keep(msg: Message) -> None:
            self.messages.append(msg)
            self._changed.set()

        await bus.subscribe(pattern, keep)
        await bus.nc.flush()
        return self

    def of(self, kind: type[T], intent_id: str | None = None) -> list[T]:
        return [m for m in self.messages if isinstance(m, kind) and (intent_id is None or m.intent_id == intent_id)]

    def kinds(self, intent_id: str) -> list[str]:
        return [type(m).__name__ for m in self.messages if m.intent_id == intent_id]

    async def wait_for(self, kind: type[T], intent_id: str | None = None, timeout: float = 10.0, count: int = 1) -> list[T]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.of(kind, intent_id)
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind.__name__} for {intent_id} within {timeout}s; saw {self.kinds(intent_id or '')}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


async def assert_invariants(report: ExecutionCompleted, recorder: Recorder, exchange: Any) -> list[OrderFilled]:
    """The invariants every execution test asserts: fills never exceed the intent, the report's totals
    are the sum of its fills (each trade counted once), and nothing of the intent is left open."""
    fills = {(f.client_order_id, f.trade_id): f for f in recorder.of(OrderFilled, report.intent_id)}
    filled = sum((f.qty for f in fills.values()), Decimal(0))
    notional = sum((f.qty * f.price for f in fills.values()), Decimal(0))
    assert filled <= report.qty, f"overfill: {filled} > {report.qty}"
    assert report.filled_qty == filled
    assert report.notional == notional
    assert report.fills == len(fills)
    if filled:
        assert report.avg_price == notional / filled
    open_orders = await exchange.fetch_open_orders("BTC/USDT")
    mine = [o for o in open_orders if str(o.get("clientOrderId", "")).startswith(report.intent_id + "-")]
    assert mine == [], f"orders left open: {[o['clientOrderId'] for o in mine]}"
    return list(fills.values())


def handler_context(intent_id: str, state: Any = None, *, clock: Any = None, delivered: int = 1) -> Any:
    """An `IntentContext` for calling an actor's handler directly, without the runtime: what the handler
    publishes is collected in `ctx.published` (and counts as stored at once)."""
    import structlog

    from bus.actor import IntentContext
    from bus.clock import WallClock

    published: list[Any] = []

    async def send(msg: Any, epoch: int = 0) -> asyncio.Future[Any]:
        published.append(msg)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    ctx: Any = IntentContext(intent_id, 0, state, send, clock or WallClock(), structlog.get_logger())
    ctx.delivered = delivered
    ctx.published = published
    return ctx
