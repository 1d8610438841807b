"""The tracker is delivered only what it uses — `IntentAccepted`, fills, `OrderFinalized`, `StrategyFinished`
and the rare `OrderRejected` / `IntentRejected` — and its report is the same whatever order those arrive in:
the intent (side, quantity, strategy, arrival bid/ask, acceptance time) comes with `StrategyFinished` too,
every order's id and attempt with its own events. A working intent's status says what is known."""

from __future__ import annotations

import random
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import msgspec

from actors.tracker import Tracker, TrackerState
from bus.clock import SimClock
from messages import (
    ExecutionCompleted,
    IntentAccepted,
    IntentRejected,
    IntentStatus,
    LateFillRecorded,
    OrderFilled,
    OrderFinalized,
    OrderRejected,
    StatusQuery,
    StrategyFinished,
    encode,
)
from tests.helpers import handler_context

D = Decimal
ID = "trk-1"
BASE = {"intent_id": ID, "venue": "paper", "symbol": "BTC/USDT"}
NOW = 10**18
ACCEPTED = NOW - 2_500_000_000


class Run:
    def __init__(self) -> None:
        self.tracker = Tracker()
        self.state: TrackerState | None = None
        self.published: list[Any] = []

        async def find_state(intent_id: str) -> Any:
            return self.state if intent_id == ID else None

        self.tracker._services = SimpleNamespace(find_state=find_state)  # type: ignore[assignment]

    async def send(self, msg: Any) -> None:
        ctx = handler_context(ID, self.state, clock=SimClock(NOW))
        await self.tracker.handle(msg, ctx)
        self.published += ctx.published
        self.state = ctx.state

    async def status(self) -> IntentStatus:
        raw = await self.tracker._intent_status(encode(StatusQuery(intent_id=ID)))
        return msgspec.json.decode(raw, type=IntentStatus)

    @property
    def reports(self) -> list[ExecutionCompleted]:
        return [m for m in self.published if isinstance(m, ExecutionCompleted)]


def fill(cid: str, attempt: int, trade: str, qty: str, price: str, fee: str = "0.01") -> OrderFilled:
    return OrderFilled(**BASE, client_order_id=cid, order_id=f"o-{cid}", trade_id=trade, attempt=attempt, side="buy",
                       qty=D(qty), price=D(price), fee=D(fee), fee_currency="USDT", liquidity="taker")


def finalized(cid: str, attempt: int, filled: str, status: str = "filled") -> OrderFinalized:
    return OrderFinalized(**BASE, client_order_id=cid, order_id=f"o-{cid}", attempt=attempt, status=status,  # type: ignore[arg-type]
                          filled_qty=D(filled))


def finished(*cids: str, qty: str = "1", reason: str = "filled", fallback: bool = True) -> StrategyFinished:
    return StrategyFinished(**BASE, client_order_ids=cids, reason=reason, attempts=1, fallback_used=fallback,
                            arrival_bid=D("100.00"), arrival_ask=D("100.02"), side="buy", qty=D(qty),
                            strategy="aggressive_limit", accepted_ns=ACCEPTED)


# An aggressive limit: attempt 1 fills 0.4 in two trades and is canceled; attempt 2 is refused; the fallback
# fills the remaining 0.6.
EXECUTION: list[Any] = [
    fill(f"{ID}-1", 1, "t1", "0.1", "100.00"),
    fill(f"{ID}-1", 1, "t2", "0.3", "100.01"),
    finalized(f"{ID}-1", 1, "0.4", "canceled"),
    OrderRejected(**BASE, client_order_id=f"{ID}-2", attempt=2, reason="scripted", error="InsufficientFunds"),
    fill(f"{ID}-F", 0, "t3", "0.6", "100.05", fee="0.06"),
    finalized(f"{ID}-F", 0, "0.6"),
    finished(f"{ID}-1", f"{ID}-2", f"{ID}-F"),
]


def test_the_tracker_is_delivered_only_what_it_uses() -> None:
    assert set(Tracker.consumes) == {
        IntentAccepted, OrderFilled, OrderFinalized, StrategyFinished, OrderRejected, IntentRejected}


def accepted() -> IntentAccepted:
    return IntentAccepted(**BASE, side="buy", qty=D(1), strategy="aggressive_limit", deadline_ns=NOW, ts_event=ACCEPTED)


async def test_the_report_from_the_fills_the_finalized_orders_and_strategy_finished() -> None:
    run = Run()
    for msg in EXECUTION:
        await run.send(msg)
    (report,) = run.reports
    notional = D("0.1") * D("100.00") + D("0.3") * D("100.01") + D("0.6") * D("100.05")
    assert report.status == "filled" and report.side == "buy" and report.strategy == "aggressive_limit"
    assert report.qty == D(1) and report.filled_qty == D(1) and report.fills == 3
    assert report.notional == notional and report.avg_price == notional / D(1)
    assert report.fees == D("0.08") and report.fee_currency == "USDT" and report.other_fees == {}
    assert report.arrival_mid == D("100.01")
    assert report.slippage_bps == ((notional - D("100.01")) / D("100.01") * 10_000).quantize(D("0.0001"))
    assert report.orders == (f"{ID}-1", f"{ID}-2", f"{ID}-F") and report.fallback_used and report.attempts == 1
    assert report.started_ns == ACCEPTED and report.completed_ns == NOW and report.duration_ms == D(2500)
    assert report.reason == "filled"


async def test_the_report_is_the_same_whatever_order_its_messages_arrive_in() -> None:
    first = Run()
    for msg in EXECUTION:
        await first.send(msg)
    (expected,) = first.reports
    rng = random.Random(7)
    for _ in range(200):
        order = EXECUTION[:]
        rng.shuffle(order)
        run = Run()
        for msg in order:
            await run.send(msg)
        # (one report, never an early one: it would lack fills)
        assert run.reports == [expected], [type(m).__name__ for m in order]


async def test_a_fill_after_the_report_is_recorded_and_announced() -> None:
    run = Run()
    await run.send(fill(f"{ID}-1", 1, "t1", "0.4", "100.00"))
    await run.send(finished(f"{ID}-1", qty="1", reason="budget exhausted", fallback=False))
    assert run.reports == []  # the order is not declared terminal yet
    await run.send(finalized(f"{ID}-1", 1, "0.4", "canceled"))
    (report,) = run.reports
    assert report.status == "partially_filled" and report.filled_qty == D("0.4")

    await run.send(fill(f"{ID}-1", 1, "t9", "0.1", "100.00"))
    (late,) = [m for m in run.published if isinstance(m, LateFillRecorded)]
    assert late.trade_id == "t9" and late.filled_qty_now == D("0.5")
    assert run.state is not None and run.state.late_fills == 1 and len(run.reports) == 1


async def test_a_working_intents_status_knows_its_quantity_from_the_acceptance() -> None:
    run = Run()
    await run.send(accepted())
    status = await run.status()
    assert status.known and status.state == "working" and status.qty == D(1) and status.orders == ()


async def test_a_working_intents_status_says_what_is_known() -> None:
    run = Run()
    await run.send(fill(f"{ID}-1", 1, "t1", "0.1", "100.00"))
    status = await run.status()
    assert status.known and status.state == "working" and status.qty is None and status.filled_qty == D("0.1")
    (order,) = status.orders
    assert (order.client_order_id, order.order_id, order.attempt, order.state) == (f"{ID}-1", f"o-{ID}-1", 1, "placed")

    await run.send(finished(f"{ID}-1"))
    status = await run.status()
    assert status.state == "finishing" and status.qty == D(1) and not status.completed

    await run.send(fill(f"{ID}-1", 1, "t2", "0.9", "100.00"))
    await run.send(finalized(f"{ID}-1", 1, "1"))
    status = await run.status()
    assert status.state == "completed" and status.completed and status.orders[0].state == "final"


async def test_a_rejected_intent_and_a_garbled_resubmission_of_a_running_one() -> None:
    run = Run()
    await run.send(IntentRejected(**BASE, field="qty", reason="0.00001 is below the market minimum amount 0.0001"))
    status = await run.status()
    assert status.state == "rejected" and status.qty is None and status.orders == ()

    running = Run()
    await running.send(fill(f"{ID}-1", 1, "t1", "0.1", "100.00"))
    await running.send(IntentRejected(**BASE, field="", reason="malformed JSON"))  # another submission of the id
    assert (await running.status()).state == "working"

    unfilled = Run()  # accepted, its first order working and nothing filled yet
    await unfilled.send(accepted())
    await unfilled.send(IntentRejected(**BASE, field="", reason="malformed JSON"))
    assert (await unfilled.status()).state == "working"


async def test_a_refused_stale_copy_does_not_undo_its_order() -> None:
    run = Run()
    await run.send(fill(f"{ID}-2", 2, "t1", "1", "100.00"))
    await run.send(finalized(f"{ID}-2", 2, "1"))
    stale = OrderRejected(**BASE, client_order_id=f"{ID}-2", attempt=2, reason="old owner", error="StaleEpoch")
    await run.send(stale)
    assert run.state is not None and run.state.orders[f"{ID}-2"].state == "final"
    await run.send(finished(f"{ID}-2"))
    (report,) = run.reports
    assert report.status == "filled"
