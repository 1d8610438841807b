"""Issue 4: every strategy as a choreography, on the paper exchange with the market stepped by the test.

The venue runs step-driven (speed 0): the recorded market only moves when a test advances it, so which
orders fill is decided by the test, not by the machine's speed. Strategy deadlines are wall-clock and
short. Every test asserts the invariants: fills <= intent, report totals == sum of fills, nothing left open.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from bus.ops.client import execute
from messages import (
    OrderKept,
    AttemptTimedOut,
    ExecutionCompleted,
    AggressiveLimitParams,
    MarketParams,
    SimpleLimitParams,
    ExecutionTimedOut,
    OrderFinalized,
    OrderPlaced,
    PlaceOrder,
    SubmitIntent,
)
from tests.e2e.conftest import Running
from tests.helpers import assert_invariants, new_intent


def aggressive(**params: Any) -> SubmitIntent:
    qty = params.pop("qty", Decimal("0.01"))
    side = params.pop("side", "buy")
    return new_intent(strategy="aggressive_limit", qty=qty, side=side, params=AggressiveLimitParams(**params))


async def run(r: Running, intent: SubmitIntent, timeout: float = 15) -> ExecutionCompleted:
    report = await execute(r.bus, intent, timeout=timeout)
    assert isinstance(report, ExecutionCompleted), report
    await assert_invariants(report, r.recorder, r.exchange)
    return report


async def placed(r: Running, intent_id: str, attempt: int) -> OrderPlaced:
    found = await r.recorder.wait_for(OrderPlaced, intent_id, timeout=10)
    while not any(p.attempt == attempt for p in found):
        found = await r.recorder.wait_for(OrderPlaced, intent_id, timeout=10, count=len(found) + 1)
    return next(p for p in found if p.attempt == attempt)


def commands(r: Running, intent_id: str) -> list[PlaceOrder]:
    return r.recorder.of(PlaceOrder, intent_id)


async def top_of_book(r: Running) -> tuple[Decimal, Decimal]:
    book = await r.exchange.fetch_order_book("BTC/USDT")
    return Decimal(repr(book["bids"][0][0])), Decimal(repr(book["asks"][0][0]))


# -- market --------------------------------------------------------------------------------------------


async def test_market_slippage_cap_turns_the_order_into_a_limit_at_the_cap(stepped: Running) -> None:
    bid, ask = await top_of_book(stepped)
    cap = (ask * (1 + Decimal("0.5") / 10_000) / Decimal("0.01")).to_integral_value(rounding="ROUND_FLOOR") * Decimal("0.01")
    intent = new_intent(qty=Decimal("20"), params=MarketParams(max_slippage_bps=Decimal("0.5"), timeout_seconds=Decimal("0.3")))

    report = await run(stepped, intent)

    (order,) = commands(stepped, intent.intent_id)
    assert order.order_type == "limit" and order.price == cap
    fills = await assert_invariants(report, stepped.recorder, stepped.exchange)
    assert fills and all(f.price <= cap for f in fills)
    assert report.status == "partially_filled" and "slippage cap" in report.reason


async def test_market_without_cap_pressure_stays_a_market_order(stepped: Running) -> None:
    intent = new_intent(qty=Decimal("0.01"), params=MarketParams(max_slippage_bps=Decimal("50")))

    report = await run(stepped, intent)

    assert [c.order_type for c in commands(stepped, intent.intent_id)] == ["market"]
    assert report.status == "filled"


async def test_a_venue_rejection_ends_in_an_honest_failed_report(stepped: Running) -> None:
    intent = new_intent(side="sell", qty=Decimal("1000"))  # the paper account holds 100 BTC

    report = await run(stepped, intent)

    assert report.status == "failed" and report.filled_qty == 0
    assert "InsufficientFunds" in report.reason


# -- simple limit ----------------------------------------------------------------------------------------


async def test_simple_limit_away_from_the_touch_times_out_and_reports_unfilled(stepped: Running) -> None:
    bid, _ask = await top_of_book(stepped)
    intent = new_intent(strategy="simple_limit", params=SimpleLimitParams(price_offset_pct=Decimal("1"), timeout_seconds=Decimal("0.3")))

    report = await run(stepped, intent)

    (order,) = commands(stepped, intent.intent_id)
    assert order.price == (bid * Decimal("0.99") / Decimal("0.01")).to_integral_value(rounding="ROUND_FLOOR") * Decimal("0.01")
    assert report.status == "unfilled" and report.filled_qty == 0
    (final,) = stepped.recorder.of(OrderFinalized, intent.intent_id)
    assert final.status == "canceled"


async def test_simple_limit_with_a_crossing_offset_fills(stepped: Running) -> None:
    intent = new_intent(strategy="simple_limit", params=SimpleLimitParams(price_offset_pct=Decimal("-0.05"), timeout_seconds=Decimal("5")))

    report = await run(stepped, intent)

    assert report.status == "filled" and report.attempts == 1


# -- aggressive limit ----------------------------------------------------------------------------------


async def test_aggressive_limit_filled_on_attempt_one_as_maker(stepped: Running) -> None:
    intent = aggressive(qty=Decimal("0.001"), attempt_timeout_seconds=Decimal("10"), total_timeout_seconds=Decimal("20"))
    execution = _start(stepped, intent)

    await placed(stepped, intent.intent_id, 1)
    result = await stepped.exchange.paper_control("advance_until", {"clientOrderId": f"{intent.intent_id}-1", "until": "done", "max_seconds": 300})
    report = await execution

    assert result["reached"]
    assert report.status == "filled" and report.attempts == 1 and not report.fallback_used
    fills = await assert_invariants(report, stepped.recorder, stepped.exchange)
    assert all(f.liquidity == "maker" for f in fills)


async def test_aggressive_limit_escalates_and_fills_on_a_later_attempt(stepped: Running) -> None:
    bid, ask = await top_of_book(stepped)
    intent = aggressive(total_timeout_seconds=Decimal("3"), attempt_timeout_seconds=Decimal("0.3"), max_retries=3)

    report = await run(stepped, intent)

    prices = [c.price for c in commands(stepped, intent.intent_id)]
    assert prices[0] == bid and prices[-1] == ask and prices == sorted(prices)
    assert report.status == "filled" and report.attempts == 3 and not report.fallback_used
    _assert_each_attempt_started_after_the_previous_was_final(stepped, intent.intent_id)
    assert len(stepped.recorder.of(AttemptTimedOut, intent.intent_id)) == 2


async def test_aggressive_limit_falls_back_to_market_for_the_remainder_after_partial_fills(stepped: Running) -> None:
    intent = aggressive(qty=Decimal("10"), max_retries=1, attempt_timeout_seconds=Decimal("30"), total_timeout_seconds=Decimal("1"))
    execution = _start(stepped, intent)

    await placed(stepped, intent.intent_id, 1)
    partial = await stepped.exchange.paper_control("advance_until", {"clientOrderId": f"{intent.intent_id}-1", "until": "fill", "max_seconds": 300})
    report = await execution

    first_filled = Decimal(partial["order"]["executedQty"])
    assert 0 < first_filled < intent.qty
    (timed_out,) = stepped.recorder.of(ExecutionTimedOut, intent.intent_id)
    assert timed_out.remaining_qty == intent.qty - first_filled
    fallback = [c for c in commands(stepped, intent.intent_id) if c.origin == "market_fallback"]
    assert [(c.order_type, c.qty, c.client_order_id) for c in fallback] == [("market", timed_out.remaining_qty, f"{intent.intent_id}-F")]
    assert report.status == "filled" and report.fallback_used and report.filled_qty == intent.qty
    _assert_each_attempt_started_after_the_previous_was_final(stepped, intent.intent_id)


async def test_aggressive_limit_without_fallback_reports_an_honest_partial_fill(stepped: Running) -> None:
    intent = aggressive(qty=Decimal("10"), max_retries=1, attempt_timeout_seconds=Decimal("30"), total_timeout_seconds=Decimal("1"), fallback="none")
    execution = _start(stepped, intent)

    await placed(stepped, intent.intent_id, 1)
    partial = await stepped.exchange.paper_control("advance_until", {"clientOrderId": f"{intent.intent_id}-1", "until": "fill", "max_seconds": 300})
    report = await execution

    assert report.status == "partially_filled" and not report.fallback_used
    assert report.filled_qty == Decimal(partial["order"]["executedQty"])
    assert stepped.recorder.of(ExecutionTimedOut, intent.intent_id) == []


async def test_break_even_bound_caps_the_price_of_every_attempt(stepped: Running) -> None:
    bid, _ask = await top_of_book(stepped)
    bound = bid - Decimal("5")
    intent = aggressive(
        total_timeout_seconds=Decimal("1"), attempt_timeout_seconds=Decimal("0.25"), max_retries=3,
        trigger_fill_price=bound, fallback="none",
    )

    report = await run(stepped, intent)

    # Every attempt is priced at the bound, so attempts 2 and 3 keep attempt 1's order (OrderKept) rather
    # than cancel it and place it again at the same price.
    prices = [c.price for c in commands(stepped, intent.intent_id)]
    kept = [k.price for k in stepped.recorder.of(OrderKept, intent.intent_id)]
    assert len(prices) + len(kept) == 3 and all(p is not None and p <= bound for p in prices + kept)
    assert report.status == "unfilled" and report.attempts == 3


async def test_break_even_slippage_allows_pricing_up_to_the_bound_plus_slippage(stepped: Running) -> None:
    _bid, ask = await top_of_book(stepped)
    intent = aggressive(
        side="sell", total_timeout_seconds=Decimal("1"), attempt_timeout_seconds=Decimal("0.25"), max_retries=3,
        trigger_fill_price=ask + Decimal("10"), trigger_slippage_bps=Decimal("1"), fallback="none",
    )

    await run(stepped, intent)

    bound = (ask + Decimal("10")) * (1 - Decimal("1") / 10_000)
    assert all(c.price is not None and c.price >= bound for c in commands(stepped, intent.intent_id))


# -- races and venue faults ----------------------------------------------------------------------------


async def test_a_fill_during_the_cancel_is_counted_before_the_next_attempt_is_sized(stepped: Running) -> None:
    intent = aggressive(qty=Decimal("1"), total_timeout_seconds=Decimal("5"), attempt_timeout_seconds=Decimal("0.3"), max_retries=3)
    await _fault(stepped, kind="fill_after_cancel", client_order_id_prefix=f"{intent.intent_id}-1", fill_fraction=0.4, delay_s=0.1)

    report = await run(stepped, intent)

    first = next(f for f in stepped.recorder.of(OrderFinalized, intent.intent_id) if f.attempt == 1)
    assert first.filled_qty > 0
    # (the next order: attempt 2's, or attempt 3's when attempt 2 kept attempt 1's order at the same price)
    second = next(c for c in commands(stepped, intent.intent_id) if c.attempt > 1)
    assert second.qty == intent.qty - first.filled_qty
    assert report.filled_qty == intent.qty
    _assert_each_attempt_started_after_the_previous_was_final(stepped, intent.intent_id)


async def test_a_cancel_that_loses_the_race_to_a_full_fill_ends_with_the_fill(stepped: Running) -> None:
    intent = aggressive(qty=Decimal("0.5"), total_timeout_seconds=Decimal("5"), attempt_timeout_seconds=Decimal("0.3"), max_retries=3)
    await _fault(stepped, kind="cancel_loses_race", client_order_id_prefix=f"{intent.intent_id}-1")

    report = await run(stepped, intent)

    kept = stepped.recorder.of(OrderKept, intent.intent_id)  # attempts that kept order 1 at its price
    assert report.status == "filled" and report.attempts == 1 + len(kept)
    assert [c.attempt for c in commands(stepped, intent.intent_id)] == [1]


async def test_dropped_order_events_are_caught_by_polling(stepped: Running) -> None:
    intent = new_intent(qty=Decimal("0.2"))
    await _fault(stepped, kind="drop_order_event", client_order_id_prefix=intent.intent_id)

    report = await run(stepped, intent)

    assert report.status == "filled" and report.fills >= 1
    assert (await stepped.exchange.paper_control("stats"))["faults_fired"]


async def test_order_not_found_for_a_while_after_placing_is_waited_out(stepped: Running) -> None:
    intent = aggressive(qty=Decimal("0.01"), attempt_timeout_seconds=Decimal("10"), total_timeout_seconds=Decimal("20"))
    await _fault(stepped, kind="drop_order_event", client_order_id_prefix=intent.intent_id)
    await _fault(stepped, kind="order_not_found", client_order_id_prefix=intent.intent_id, duration_s=30.0)
    execution = _start(stepped, intent)

    await placed(stepped, intent.intent_id, 1)
    await stepped.exchange.paper_control("advance_until", {"clientOrderId": f"{intent.intent_id}-1", "until": "done", "max_seconds": 300})
    await stepped.exchange.paper_control("advance", {"seconds": 31})  # past the venue's lag
    report = await execution

    assert report.status == "filled" and report.attempts == 1


async def test_a_create_that_times_out_after_placing_is_resolved_by_client_order_id(stepped: Running) -> None:
    intent = new_intent(qty=Decimal("0.05"))
    await _fault(stepped, kind="request_timeout", client_order_id_prefix=intent.intent_id, count=1)

    report = await run(stepped, intent)

    # The venue's order stream may finish the execution before the lookup by client order id answers;
    # the placer still resolves the unknown outcome to the one order that exists.
    placed_msgs = await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)
    assert placed_msgs[0].recovered
    assert report.status == "filled"
    mine = await _created(stepped, f"{intent.intent_id}-1")  # the venue's own record (lookups lag on binance)
    assert len(mine) == 1


async def test_a_rate_limited_create_is_retried_with_the_same_client_order_id(stepped: Running) -> None:
    intent = new_intent(qty=Decimal("0.05"))
    await _fault(stepped, kind="rate_limit", client_order_id_prefix=intent.intent_id, count=1)

    report = await run(stepped, intent)

    assert report.status == "filled"
    mine = await _created(stepped, intent.intent_id)
    assert len(mine) == 1


# -- helpers -------------------------------------------------------------------------------------------


async def _created(r: Running, prefix: str) -> list[dict[str, Any]]:
    """Every create the venue accepted whose client order id starts with `prefix` (the venue's audit)."""
    return list((await r.exchange.paper_control("audit", {"client_order_id_prefix": prefix}))["accepted"])


def _start(r: Running, intent: SubmitIntent) -> Any:
    import asyncio

    return asyncio.ensure_future(_run_report(r, intent))


async def _run_report(r: Running, intent: SubmitIntent) -> ExecutionCompleted:
    return await run(r, intent, timeout=30)


async def _fault(r: Running, **rule: Any) -> None:
    await r.exchange.paper_control("faults_set", {"rules": [rule]})


def _assert_each_attempt_started_after_the_previous_was_final(r: Running, intent_id: str) -> None:
    """The choreography's central invariant, read off the message order on the bus."""
    messages = [m for m in r.recorder.messages if m.intent_id == intent_id]
    for index, msg in enumerate(messages):
        if isinstance(msg, PlaceOrder):
            earlier = [m for m in messages[:index] if isinstance(m, PlaceOrder)]
            for previous in earlier:
                assert any(
                    isinstance(m, OrderFinalized) and m.client_order_id == previous.client_order_id
                    for m in messages[:index]
                ), f"{msg.client_order_id} placed before {previous.client_order_id} was final"
