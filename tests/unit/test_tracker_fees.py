"""The tracker keeps every fee: base valued at the fill's price, quote as is, any other currency summed in
`ExecutionCompleted.other_fees` — on the report and on fills that come after it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


from actors.tracker import Tracker, TrackerState
from bus.clock import SimClock
from messages import (
    ExecutionCompleted,
    LateFillRecorded,
    OrderFilled,
    OrderFinalized,
    StrategyFinished,
)
from tests.helpers import handler_context

BASE = {"intent_id": "fee-1", "venue": "paper", "symbol": "BTC/USDT"}


class Run:
    def __init__(self) -> None:
        self.tracker = Tracker()
        self.state: TrackerState | None = None
        self.published: list[Any] = []

    async def send(self, msg: Any) -> None:
        ctx = handler_context("fee-1", self.state, clock=SimClock(10**18))
        await self.tracker.handle(msg, ctx)
        self.published += ctx.published
        self.state = ctx.state


def finished(qty: str, reason: str = "") -> StrategyFinished:
    """What the supervisor says at the end, with the intent repeated (the report never depends on having
    seen `IntentAccepted`, which these tests do not send)."""
    return StrategyFinished(**BASE, client_order_ids=("fee-1-1",), reason=reason, attempts=1, fallback_used=False,
                            side="buy", qty=Decimal(qty), strategy="market", accepted_ns=10**18 - 10**9)


def fill(trade_id: str, qty: str, price: str, fee: str, currency: str) -> OrderFilled:
    return OrderFilled(**BASE, client_order_id="fee-1-1", order_id="9", trade_id=trade_id, attempt=1, side="buy",
                       qty=Decimal(qty), price=Decimal(price), fee=Decimal(fee), fee_currency=currency,
                       liquidity="taker")


async def test_fees_in_base_quote_and_a_third_currency_are_all_reported() -> None:
    run = Run()
    await run.send(fill("t1", "1", "100", "0.001", "BTC"))   # base: 0.1 USDT at the fill's price
    await run.send(fill("t2", "1", "100", "0.2", "USDT"))    # quote: as is
    await run.send(fill("t3", "1", "100", "0.003", "BNB"))   # a third currency: kept as BNB
    await run.send(fill("t4", "1", "100", "0.004", "BNB"))
    await run.send(OrderFinalized(**BASE, client_order_id="fee-1-1", order_id="9", attempt=1, status="filled", filled_qty=Decimal("4")))
    await run.send(finished("4", reason=""))

    (report,) = [m for m in run.published if isinstance(m, ExecutionCompleted)]
    assert report.fees == Decimal("0.3") and report.fee_currency == "USDT"
    assert report.other_fees == {"BNB": Decimal("0.007")}
    assert report.filled_qty == Decimal("4") and report.fills == 4


async def test_a_late_fill_keeps_its_third_currency_fee() -> None:
    run = Run()
    await run.send(fill("t1", "1", "100", "0.003", "BNB"))
    await run.send(OrderFinalized(**BASE, client_order_id="fee-1-1", order_id="9", attempt=1, status="canceled", filled_qty=Decimal("1")))
    await run.send(finished("2", reason="timeout"))
    (report,) = [m for m in run.published if isinstance(m, ExecutionCompleted)]
    assert report.other_fees == {"BNB": Decimal("0.003")}

    await run.send(fill("t2", "0.5", "100", "0.0015", "BNB"))

    (late,) = [m for m in run.published if isinstance(m, LateFillRecorded)]
    assert late.filled_qty_now == Decimal("1.5")
    assert run.state is not None
    from actors.tracker import other_fees

    assert other_fees(run.state.fills) == {"BNB": Decimal("0.0045")}  # recorded, in its currency


async def test_a_reason_the_reconciler_gives_for_an_order_reaches_the_report() -> None:
    run = Run()
    await run.send(fill("t1", "1", "100", "0.1", "USDT"))
    await run.send(OrderFinalized(**BASE, client_order_id="fee-1-1", order_id="9", attempt=1, status="filled",
                                  filled_qty=Decimal("1"), reason="trades missing: ..."))
    await run.send(finished("1", reason=""))
    (report,) = [m for m in run.published if isinstance(m, ExecutionCompleted)]
    assert report.reason == "fee-1-1: trades missing: ..."
