"""Simple limit: one limit order at the touch (improved by an offset, bounded by break-even) for its timeout."""

from __future__ import annotations

import pytest

from actors.strategies.base import AllFinal, Arrived, AskPrice, AttemptExpired, CancelWorking, Finish, Place, Quoted
from actors.strategies.simple_limit import SimpleLimit
from messages import CancelOrder, ExecutionTimedOut, PlaceOrder, SimpleLimitParams
from tests.actors.kit import NS, D, order_violations, quote, supervised, view
from tests.helpers import new_intent

S = SimpleLimit()


def test_arrival_asks_for_the_touch() -> None:
    assert S.decide(SimpleLimitParams(), view(), Arrived(quote(mode="arrival", attempt=0))) == AskPrice(attempt=1, mode="touch")


@pytest.mark.parametrize(
    ("side", "touch", "offset", "trigger", "bps", "expected"),
    [
        ("buy", "100.00", "0", None, "0", "100.00"),
        ("buy", "100.00", "0.1", None, "0", "99.90"),  # improved: lower
        ("buy", "100.00", "0.015", None, "0", "99.98"),  # 99.985 rounds down (never above the intended price)
        ("buy", "100.00", "-0.1", None, "0", "100.10"),  # a negative offset crosses
        ("sell", "100.02", "0.1", None, "0", "100.13"),  # 100.12002 rounds up for a sell
        ("sell", "100.02", "-0.1", None, "0", "99.92"),  # 99.91998 rounds up
        ("buy", "100.00", "-0.1", "100.05", "0", "100.05"),  # break-even caps the crossing buy
        ("buy", "100.00", "-0.1", "100.00", "5", "100.05"),  # ... plus its slippage allowance
        ("sell", "100.02", "-0.1", "100.00", "0", "100.00"),  # a sell never below break-even
        ("buy", "100.00", "0", "101", "0", "100.00"),  # a bound the price is inside of changes nothing
    ],
)
def test_the_price_is_the_touch_improved_by_the_offset_and_bounded_by_break_even(
    side: str, touch: str, offset: str, trigger: str | None, bps: str, expected: str
) -> None:
    params = SimpleLimitParams(price_offset_pct=D(offset), trigger_fill_price=None if trigger is None else D(trigger),
                               trigger_slippage_bps=D(bps))
    v = view(side=side, attempt=1, now_ns=NS)

    decision = S.decide(params, v, Quoted(quote(touch, side=side)))

    assert decision == Place(attempt=1, order_type="limit", price=D(expected), deadline_ns=v.deadline_ns)


def test_expiry_cancels_and_the_end_is_a_finish_without_fallback() -> None:
    assert S.decide(SimpleLimitParams(), view(attempt=1), AttemptExpired()) == CancelWorking()
    assert S.decide(SimpleLimitParams(), view(attempt=1), AllFinal()) == Finish("timeout with quantity left")


async def test_one_order_rests_for_the_whole_timeout_then_is_canceled() -> None:
    kit, market = await supervised(rule="nothing")
    intent = new_intent(qty=D(1), strategy="simple_limit",
                        params=SimpleLimitParams(timeout_seconds=D(10), price_offset_pct=D("0.1")))

    await kit.send(intent)
    start = kit.clock.now_ns()
    report = await kit.run_until_finished(intent.intent_id)

    (order,) = kit.of(PlaceOrder, intent.intent_id)
    (cancel,) = kit.of(CancelOrder, intent.intent_id)
    assert order.price == D("99.90") and order.qty == D(1)
    assert cancel.ts_event - start == 10 * NS
    assert report.reason == "timeout with quantity left" and not report.fallback_used
    assert kit.of(ExecutionTimedOut, intent.intent_id) == []


async def test_a_partial_fill_is_kept_and_nothing_more_is_placed() -> None:
    kit, market = await supervised(rule="nothing")
    market.script(0.4)
    intent = new_intent(qty=D(1), side="sell", strategy="simple_limit", params=SimpleLimitParams(timeout_seconds=D(5)))

    await kit.send(intent)
    await kit.run_until_finished(intent.intent_id)

    (order,) = market.placed
    assert order.price == D("100.02") and market.orders[order.client_order_id].filled == D("0.4")
    assert order_violations(kit, intent) == []


async def test_the_book_moving_through_the_order_fills_it_before_the_timeout() -> None:
    kit, market = await supervised(rule="marketable")
    market.at(3, ask="100.00", bid="99.98")  # the sellers come down to our bid
    intent = new_intent(qty=D(1), strategy="simple_limit", params=SimpleLimitParams(timeout_seconds=D(10)))

    await kit.send(intent)
    start = kit.clock.now_ns()
    report = await kit.run_until_finished(intent.intent_id)

    assert report.reason == "filled" and kit.clock.now_ns() - start == 3 * NS
    assert kit.of(CancelOrder, intent.intent_id) == []


async def test_a_cancel_stops_the_working_order_and_reports_what_filled() -> None:
    from messages import CancelIntent, CancelIntentAccepted

    kit, market = await supervised(rule="nothing")
    market.script(0.25)
    intent = new_intent(qty=D(1), strategy="simple_limit", params=SimpleLimitParams(timeout_seconds=D(30)))
    await kit.send(intent)
    await kit.advance(2)

    await kit.send(CancelIntent(intent_id=intent.intent_id, venue="paper", symbol="BTC/USDT", request="c", reason="enough"))
    report = kit.finished(intent.intent_id)

    assert kit.of(CancelIntentAccepted, intent.intent_id)[0].phase == "working"
    assert report is not None and report.canceled and report.reason.startswith("canceled")
    (order,) = market.orders.values()
    assert order.final and order.filled == D("0.25")
    await kit.advance(60)
    assert len(kit.of(PlaceOrder, intent.intent_id)) == 1
