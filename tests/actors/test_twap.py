"""TWAP: equal slices over the horizon, each worked touch -> inside -> cross within its interval; cumulative
targets (a short slice is made up by the next); waits between slices; the fallback after the last."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from actors.strategies.base import (
    AllFinal, Arrived, AskPrice, AttemptExpired, CancelWorking, HandOff, Place, Quoted, Reprice, WaitUntil, Woke,
)
from actors.strategies.twap import Twap
from messages import ExecutionTimedOut, IntentRejected, PlaceOrder, PriceRequested, TwapParams
from tests.actors.kit import NS, D, order_violations, quote, supervised, view
from tests.helpers import new_intent

T = Twap()
P = TwapParams(horizon_seconds=D(6), slices=4, fallback="none")
MS = NS // 1000


def v(**overrides: Any) -> Any:
    return view(**{"deadline_ns": 6 * NS, **overrides})


# -- the pure core -------------------------------------------------------------------------------------------


def test_arrival_asks_for_the_first_slice_at_the_touch() -> None:
    assert T.decide(P, v(), Arrived(quote(attempt=0, mode="arrival"))) == AskPrice(
        attempt=1, mode="touch", leg=0, qty=D("0.25")
    )


@pytest.mark.parametrize(
    ("leg", "attempt", "first", "now_ms", "filled", "quoted", "expected_qty", "expected_deadline_ms"),
    [
        (0, 1, 1, 0, "0", "100.00", "0.25", 500),  # the slice's interval shared by its 3 attempts
        (0, 2, 1, 500, "0", "100.01", "0.25", 1000),
        (0, 3, 1, 1000, "0.1", "100.02", "0.15", 1500),  # what is left of the slice's target
        (1, 4, 4, 1500, "0", "100.00", "0.5", 2000),  # slice 0 filled nothing: slice 1 makes it up
        (3, 10, 10, 4500, "0.5", "100.00", "0.5", 5000),  # the last slice: everything left
        (0, 3, 1, 1400, "0", "100.02", "0.25", 1650),  # started late: still a fair minimum (interval / 6)
    ],
)
def test_a_slice_order_is_its_cumulative_target_less_the_fills(
    leg: int, attempt: int, first: int, now_ms: int, filled: str, quoted: str, expected_qty: str, expected_deadline_ms: int
) -> None:
    view_ = v(leg=leg, attempt=attempt, leg_first_attempt=first, now_ns=now_ms * MS, filled=D(filled))

    decision = T.decide(P, view_, Quoted(quote(quoted)))

    assert decision == Place(attempt=attempt, order_type="limit", price=D(quoted), deadline_ns=expected_deadline_ms * MS,
                             qty=D(expected_qty))


def test_limit_price_bounds_the_price() -> None:
    params = TwapParams(horizon_seconds=D(6), slices=4, limit_price=D("100.01"), fallback="none")
    decision = T.decide(params, v(attempt=3, leg_first_attempt=1, now_ns=NS), Quoted(quote("100.02", mode="cross")))
    assert isinstance(decision, Place) and decision.price == D("100.01")
    sell = T.decide(params, v(side="sell", attempt=3, leg_first_attempt=1, now_ns=NS), Quoted(quote("100.00", side="sell")))
    assert isinstance(sell, Place) and sell.price == D("100.01")


@pytest.mark.parametrize(
    ("event", "leg", "attempt", "first", "now_ms", "filled", "expected"),
    [
        (AttemptExpired(), 0, 1, 1, 500, "0", Reprice(attempt=2, mode="inside")),
        (AttemptExpired(), 0, 2, 1, 1000, "0", Reprice(attempt=3, mode="cross")),
        (AttemptExpired(), 0, 3, 1, 1500, "0", CancelWorking(announce=True)),  # the slice's last attempt
        (AttemptExpired(), 0, 1, 1, 1500, "0", CancelWorking(announce=True)),  # the slice's interval is over
        (AllFinal(), 0, 1, 1, 200, "0.25", WaitUntil(1500 * MS)),  # slice met: wait for the next
        (AllFinal(), 0, 1, 1, 200, "0.1", AskPrice(attempt=2, mode="inside", qty=D("0.15"))),  # short: go on
        (AllFinal(), 0, 3, 1, 1200, "0.1", WaitUntil(1500 * MS)),  # attempts used up: wait for the next slice
        (AllFinal(), 0, 3, 1, 1500, "0", AskPrice(attempt=4, mode="touch", leg=1, qty=D("0.5"))),
        (Woke(), 0, 1, 1, 1500, "0.25", AskPrice(attempt=2, mode="touch", leg=1, qty=D("0.25"))),
        # A slice whose cancel took long still ends aggressively, then the clock's slice comes next.
        (AllFinal(), 0, 2, 1, 3100, "0", AskPrice(attempt=3, mode="cross", qty=D("0.25"))),
        (AllFinal(), 0, 3, 1, 3100, "0", AskPrice(attempt=4, mode="touch", leg=2, qty=D("0.75"))),
        (AllFinal(), 3, 12, 10, 6000, "0.5", HandOff("twap horizon over after 4 slices", fallback=False)),
    ],
)
def test_after_an_attempt(event: Any, leg: int, attempt: int, first: int, now_ms: int, filled: str, expected: Any) -> None:
    view_ = v(leg=leg, attempt=attempt, leg_first_attempt=first, now_ns=now_ms * MS, filled=D(filled))
    assert T.decide(P, view_, event) == expected


def test_the_last_slice_hands_to_the_market_only_if_asked() -> None:
    last = v(leg=3, attempt=12, leg_first_attempt=10, now_ns=6 * NS, filled=D("0.5"))
    with_market = TwapParams(horizon_seconds=D(6), slices=4, fallback="market")
    assert T.decide(with_market, last, AllFinal()) == HandOff("twap horizon over after 4 slices", fallback=True)
    assert T.decide(P, last, AllFinal()) == HandOff("twap horizon over after 4 slices", fallback=False)


def test_a_slice_below_the_venue_minimum_is_left_to_the_next() -> None:
    decision = T.decide(P, v(min_amount=D("0.3")), Arrived(quote(attempt=0, mode="arrival")))
    assert decision == WaitUntil(1500 * MS)


@pytest.mark.parametrize(
    ("qty", "slices", "min_amount", "step", "rejected"),
    [
        ("1", 4, "0.0001", "0.0001", False),
        ("0.0003", 4, "0.0001", "0.0001", True),  # 0.000075 is 0 on the grid
        ("0.001", 4, "0.0005", "0.0001", True),  # 0.00025 per slice is below the minimum
        ("0.002", 4, "0.0005", "0.0001", False),
        ("5", 1000, None, "1", True),  # 0.005 floors to 0
    ],
)
def test_check_rejects_slices_below_the_venue_minimum(qty: str, slices: int, min_amount: str | None, step: str, rejected: bool) -> None:
    params = TwapParams(horizon_seconds=D(60), slices=slices, fallback="none")
    problem = T.check(params, D(qty), None if min_amount is None else D(min_amount), D(step))
    assert (problem is not None) == rejected
    if problem is not None:
        assert problem[0] == "params.slices"


# -- whole intents ---------------------------------------------------------------------------------------------


def _intent(qty: str = "1", **params: Any) -> Any:
    values: dict[str, Any] = {"horizon_seconds": D(6), "slices": 4}
    values.update(params)
    return new_intent(qty=D(qty), strategy="twap", params=TwapParams(**values))


def _at(kit: Any, msg: Any, start: int) -> Decimal:
    return Decimal(msg.ts_event - start) / NS


async def test_four_slices_are_placed_at_the_slice_times() -> None:
    kit, market = await supervised(rule="all")
    intent = _intent()

    await kit.send(intent)
    start = kit.clock.now_ns()
    report = await kit.run_until_finished(intent.intent_id)

    orders = kit.of(PlaceOrder, intent.intent_id)
    assert [(o.leg, o.qty, _at(kit, o, start)) for o in orders] == [
        (0, D("0.25"), 0), (1, D("0.25"), D("1.5")), (2, D("0.25"), 3), (3, D("0.25"), D("4.5")),
    ]
    # Between slices it waits: nothing is asked for before the next slice's time.
    asked = [(m.leg, _at(kit, m, start)) for m in kit.of(PriceRequested, intent.intent_id) if m.attempt]
    assert asked == [(0, 0), (1, D("1.5")), (2, 3), (3, D("4.5"))]
    assert report.reason == "filled" and not report.fallback_used and order_violations(kit, intent) == []


async def test_each_slice_escalates_within_its_interval() -> None:
    kit, market = await supervised(rule="nothing")
    intent = _intent(fallback="none")

    await kit.send(intent)
    start = kit.clock.now_ns()
    await kit.run_until_finished(intent.intent_id)

    for leg in range(4):
        begins, ends = D("1.5") * leg, D("1.5") * (leg + 1)
        orders = [o for o in kit.of(PlaceOrder, intent.intent_id) if o.leg == leg]
        assert [o.price for o in orders] == [D("100.00"), D("100.01"), D("100.02")], leg
        assert all(begins <= _at(kit, o, start) < ends for o in orders), leg
        assert all(o.deadline_ns - start <= ends * NS for o in orders), leg
    assert order_violations(kit, intent) == []


async def test_a_slice_that_fills_nothing_is_caught_up_by_the_next() -> None:
    kit, market = await supervised(rule="nothing")
    kit.at("1.5", lambda: setattr(market, "rule", "all"))
    intent = _intent()

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    filled = [(o.cmd.leg, o.filled) for o in market.orders.values() if o.filled]
    assert filled == [(1, D("0.5")), (2, D("0.25")), (3, D("0.25"))]
    assert report.reason == "filled" and not report.fallback_used


async def test_a_partial_slice_is_made_up_within_its_interval_then_by_the_next() -> None:
    kit, market = await supervised(rule="nothing")
    market.script(0.4, 0, 0)  # slice 0: 0.1 of 0.25, then nothing
    kit.at("1.5", lambda: setattr(market, "rule", "all"))
    intent = _intent()

    await kit.send(intent)
    await kit.run_until_finished(intent.intent_id)

    assert [(o.leg, o.qty) for o in market.placed][:4] == [(0, D("0.25")), (0, D("0.15")), (0, D("0.15")), (1, D("0.4"))]
    assert order_violations(kit, intent) == []


@pytest.mark.parametrize("fallback", ["market", "none"])
async def test_after_the_last_slice_the_fallback_takes_the_rest_only_if_asked(fallback: str) -> None:
    kit, market = await supervised(rule="nothing")
    intent = _intent(fallback=fallback)

    await kit.send(intent)
    start = kit.clock.now_ns()
    report = await kit.run_until_finished(intent.intent_id)

    handed = kit.of(ExecutionTimedOut, intent.intent_id)
    if fallback == "market":
        (timed_out,) = handed
        assert timed_out.remaining_qty == D(1) and timed_out.ts_event - start == 6 * NS
        assert report.fallback_used and report.reason == "filled"
    else:
        assert handed == [] and not report.fallback_used
        assert report.reason == "twap horizon over after 4 slices"


async def test_limit_price_bounds_every_price() -> None:
    kit, market = await supervised(rule="nothing")
    intent = _intent(limit_price=D("100.01"), fallback="none")

    await kit.send(intent)
    await kit.run_until_finished(intent.intent_id)

    prices = {o.price for o in kit.of(PlaceOrder, intent.intent_id)}
    assert prices == {D("100.00"), D("100.01")}


async def test_slice_quantities_are_on_the_amount_grid() -> None:
    kit, market = await supervised(rule="all")
    intent = _intent(slices=3)

    await kit.send(intent)
    await kit.run_until_finished(intent.intent_id)

    assert [o.qty for o in market.placed] == [D("0.3333"), D("0.3333"), D("0.3334")]


async def test_intake_rejects_slices_below_the_venue_minimum() -> None:
    kit, market = await supervised(min_amount="0.0001")
    intent = _intent(qty="0.0003")

    await kit.send(intent)

    (rejected,) = kit.of(IntentRejected, intent.intent_id)
    assert rejected.field == "params.slices" and kit.of(PlaceOrder) == []


def test_after_a_slice_skipped_below_the_minimum_the_next_slice_starts() -> None:
    """Found by the kit: slice 0 (0.05 BTC, 5 USDT) is below a 10 USDT minimum order value, so the arrival
    waits for slice 1; woken there, the core asked for a price of slice 0's nothing (qty 0), which the driver
    reads as "nothing left": the intent finished "filled" with nothing filled."""
    woke = v(qty=D("0.2"), min_cost=D(10), now_ns=1500 * MS)
    assert T.decide(P, woke, Woke()) == AskPrice(attempt=1, mode="touch", leg=1, qty=D("0.1"))


async def test_slices_below_the_minimum_order_value_are_merged_into_later_ones() -> None:
    kit, market = await supervised(rule="all", min_cost="10")
    intent = _intent(qty="0.2")

    await kit.send(intent)
    start = kit.clock.now_ns()
    report = await kit.run_until_finished(intent.intent_id)

    assert [(o.leg, o.qty, _at(kit, o, start)) for o in market.placed] == [
        (1, D("0.1"), D("1.5")), (3, D("0.1"), D("4.5")),  # 0.05 a slice is 5 USDT: two slices in one
    ]
    assert report.reason == "filled" and sum(o.filled for o in market.orders.values()) == D("0.2")
