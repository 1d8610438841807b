"""Edges of single actors on the real bus: a stale book is refused, not guessed at; a late fill is
recorded and announced; a tracker status query works mid-flight."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from bus.bus import Bus
from bus.ops.client import execute
from bus.runtime import ActorHost
from bus.server import EmbeddedNats
from messages import (
    ExecutionCompleted,
    LateFillRecorded,
    OrderFilled,
    OrderFinalized,
    PlaceOrder,
    PriceUnavailable,
    StrategyFinished,
)
from actors.tracker import Tracker
from tests.e2e.conftest import Running, start_running, stop_running, stepped_config
from tests.helpers import Recorder, fast_settings, new_intent


@pytest.fixture
async def stale() -> AsyncIterator[Running]:
    config = stepped_config()
    config.actor_options["pricer"] = {"max_age_s": 0.001}  # the frozen market's book is stale at once
    r = await start_running(config)
    try:
        yield r
    finally:
        await stop_running(r)


async def test_a_stale_book_gets_an_explicit_error_and_nothing_is_placed(stale: Running) -> None:
    # The first request opens the book stream and is priced from the book it returns; on a frozen
    # market no update follows, so by the next request that book has aged past the limit.
    first = await execute(stale.bus, new_intent(), timeout=30)
    assert isinstance(first, ExecutionCompleted)
    intent = new_intent()

    report = await execute(stale.bus, intent, timeout=30)

    assert isinstance(report, ExecutionCompleted)
    assert report.status == "failed" and "no price" in report.reason
    unavailable = stale.recorder.of(PriceUnavailable, intent.intent_id)
    assert unavailable and all("stale" in u.reason for u in unavailable)
    assert stale.recorder.of(PlaceOrder, intent.intent_id) == []


async def test_a_fill_after_the_report_is_recorded_and_announced(nats_server: EmbeddedNats) -> None:
    bus = await Bus.connect(nats_server.url, fast_settings())
    recorder = await Recorder().attach(bus)
    try:
        async with ActorHost(bus, Tracker()):
            base = {"intent_id": "late-1", "venue": "paper", "symbol": "BTC/USDT"}
            fill = {**base, "client_order_id": "late-1-1", "order_id": "9", "attempt": 1, "side": "buy",
                    "price": Decimal("100"), "fee": Decimal("0"), "fee_currency": "USDT", "liquidity": "maker"}
            # (the tracker reads the intent from `StrategyFinished`, not from `IntentAccepted`)
            await bus.publish(OrderFilled(**fill, trade_id="t1", qty=Decimal("1")))
            await bus.publish(OrderFinalized(**base, client_order_id="late-1-1", order_id="9", attempt=1, status="canceled", filled_qty=Decimal("1")))
            await bus.publish(StrategyFinished(**base, client_order_ids=("late-1-1",), reason="timeout", attempts=1, fallback_used=False,
                                               side="buy", qty=Decimal("2"), strategy="market"))
            (report,) = await recorder.wait_for(ExecutionCompleted, "late-1")

            await bus.publish(OrderFilled(**fill, trade_id="t2", qty=Decimal("0.5")))
            (late,) = await recorder.wait_for(LateFillRecorded, "late-1")

        assert report.status == "partially_filled" and report.filled_qty == Decimal("1")
        assert late.trade_id == "t2" and late.filled_qty_now == Decimal("1.5")
    finally:
        await bus.close()
