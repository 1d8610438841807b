"""Market: one market order; with `max_slippage_bps`, a limit at the cap when the book is too thin."""

from __future__ import annotations

import pytest

from actors.strategies.base import AllFinal, Arrived, AttemptExpired, CancelWorking, Finish, Place
from actors.strategies.market import Market
from messages import ExecutionTimedOut, MarketParams, PlaceOrder
from tests.actors.kit import NS, D, order_violations, quote, supervised, view
from tests.helpers import new_intent

M = Market()


@pytest.mark.parametrize(
    ("side", "cap", "sweep", "expected"),
    [
        ("buy", None, "touch", ("market", None)),
        ("buy", None, None, ("market", None)),  # no cap: a thin book changes nothing
        ("buy", "10", "100.05", ("market", None)),  # within the cap (100.12)
        ("buy", "10", "100.12", ("market", None)),  # exactly at the cap
        ("buy", "10", "100.13", ("limit", D("100.12"))),  # 100.02 x 1.001 = 100.12002, down to the tick
        ("buy", "10", None, ("limit", D("100.12"))),  # too thin to tell: at the cap
        ("sell", "10", "99.95", ("market", None)),
        ("sell", "10", "99.89", ("limit", D("99.90"))),  # 100.00 x 0.999 = 99.90, up to the tick
        ("sell", "0", "99.99", ("limit", D("100.00"))),  # a zero cap rests at the touch
    ],
)
def test_arrival_decides_market_or_a_limit_at_the_cap(side: str, cap: str | None, sweep: str | None, expected: tuple) -> None:
    params = MarketParams(max_slippage_bps=None if cap is None else D(cap), timeout_seconds=D(7))
    v = view(side=side, now_ns=NS)

    decision = M.decide(params, v, Arrived(quote("100.01", mode="arrival", side=side, attempt=0, sweep=sweep)))

    assert isinstance(decision, Place) and decision.attempt == 1
    assert (decision.order_type, decision.price) == expected
    if decision.order_type == "market":
        assert decision.with_reference and decision.deadline_ns == v.deadline_ns
    else:
        assert decision.deadline_ns == NS + 7 * NS and "slippage cap" in decision.reason


def test_after_the_order_market_cancels_on_expiry_and_finishes() -> None:
    params = MarketParams()
    assert M.decide(params, view(attempt=1), AttemptExpired()) == CancelWorking()
    assert M.decide(params, view(attempt=1), AllFinal()) == Finish("timeout with quantity left")
    assert M.decide(params, view(attempt=1, reason="slippage cap 5 bps: limit at 1"), AllFinal()) == Finish(
        "slippage cap 5 bps: limit at 1"
    )


async def test_without_a_cap_one_market_order_fills_everything() -> None:
    kit, market = await supervised()
    intent = new_intent(qty=D("0.5"), strategy="market")

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    (order,) = kit.of(PlaceOrder, intent.intent_id)
    assert (order.order_type, order.qty, order.ref_price) == ("market", D("0.5"), D("100.02"))
    assert report.reason == "filled" and not report.fallback_used and report.attempts == 1
    assert order_violations(kit, intent) == []


async def test_with_a_cap_and_a_thin_book_it_rests_at_the_cap_then_gives_up() -> None:
    kit, market = await supervised()
    market.set_book(sweep=D("100.50"))
    market.script(0.4)  # what the book holds up to the cap fills; the rest rests
    intent = new_intent(qty=D(1), strategy="market", params=MarketParams(max_slippage_bps=D(10), timeout_seconds=D(5)))

    await kit.send(intent)
    start = kit.clock.now_ns()
    report = await kit.run_until_finished(intent.intent_id)

    (order,) = kit.of(PlaceOrder, intent.intent_id)
    assert (order.order_type, order.price) == ("limit", D("100.12"))
    assert kit.clock.now_ns() - start >= 5 * NS  # it rested for its timeout
    assert "slippage cap 10 bps" in report.reason and not report.fallback_used
    assert kit.of(ExecutionTimedOut, intent.intent_id) == []
    assert market.orders[order.client_order_id].filled == D("0.4")


async def test_with_a_cap_and_a_deep_book_it_is_a_market_order() -> None:
    kit, market = await supervised()
    intent = new_intent(qty=D(1), side="sell", strategy="market", params=MarketParams(max_slippage_bps=D(10)))

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    (order,) = kit.of(PlaceOrder, intent.intent_id)
    assert (order.order_type, order.ref_price) == ("market", D("100.00"))
    assert report.reason == "filled"
