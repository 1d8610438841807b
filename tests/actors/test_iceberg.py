"""Iceberg: `display_qty` at a time; the next child only once the previous is terminal; the last child takes
the remainder; at `limit_price` or the touch; the budget's end cancels and hands off; a cap on spare children."""

from __future__ import annotations

from typing import Any

import pytest

from actors.strategies.base import AllFinal, Arrived, AskPrice, AttemptExpired, CancelWorking, HandOff, Place, Quoted, Woke
from actors.strategies.iceberg import SPARE_CHILDREN, Iceberg
from messages import CancelOrder, ExecutionTimedOut, IcebergParams, IntentRejected, PlaceOrder
from tests.actors.kit import NS, D, order_violations, quote, supervised, view
from tests.helpers import new_intent

I = Iceberg()
P = IcebergParams(display_qty=D("0.3"), timeout_seconds=D(10))


def test_the_first_child_joins_the_touch_or_rests_at_the_limit() -> None:
    assert I.decide(P, view(), Arrived(quote(attempt=0, mode="arrival"))) == AskPrice(
        attempt=1, mode="touch", leg=1, qty=D("0.3")
    )
    limited = IcebergParams(display_qty=D("0.3"), limit_price=D("99.555"))
    assert I.decide(limited, view(), Arrived(quote(attempt=0, mode="arrival"))) == Place(
        attempt=1, order_type="limit", price=D("99.55"), deadline_ns=10 * NS, qty=D("0.3"), leg=1
    )
    sell = I.decide(limited, view(side="sell"), Arrived(quote(attempt=0, mode="arrival", side="sell")))
    assert isinstance(sell, Place) and sell.price == D("99.56")  # on the grid, in our favour


@pytest.mark.parametrize(
    ("filled", "expected_qty"),
    [("0", "0.3"), ("0.3", "0.3"), ("0.6", "0.3"), ("0.9", "0.1"), ("0.75", "0.25")],  # the last takes the rest
)
def test_a_child_is_display_qty_or_what_is_left(filled: str, expected_qty: str) -> None:
    decision = I.decide(P, view(attempt=2, filled=D(filled), now_ns=NS), Quoted(quote("100.00")))
    assert decision == Place(attempt=2, order_type="limit", price=D("100.00"), deadline_ns=10 * NS, qty=D(expected_qty))


def test_the_next_child_follows_a_terminal_one_until_the_budget_or_the_cap() -> None:
    assert I.decide(P, view(attempt=1, filled=D("0.3"), now_ns=NS), AllFinal()) == AskPrice(
        attempt=2, mode="touch", leg=2, qty=D("0.3")
    )
    assert I.decide(P, view(attempt=1, now_ns=10 * NS), AllFinal()) == HandOff("iceberg budget over", fallback=False)
    market = IcebergParams(display_qty=D("0.3"), fallback="market")
    assert I.decide(market, view(attempt=1, now_ns=10 * NS), Woke()) == HandOff("iceberg budget over", fallback=True)
    assert I.decide(P, view(attempt=1), AttemptExpired()) == CancelWorking()
    cap = 4 + SPARE_CHILDREN  # 1 / 0.3 needs 4 children
    assert isinstance(I.decide(P, view(attempt=cap - 1, now_ns=NS), AllFinal()), AskPrice)
    assert I.decide(P, view(attempt=cap, now_ns=NS), AllFinal()) == HandOff(f"iceberg stopped after {cap} children", fallback=False)


@pytest.mark.parametrize(
    ("display", "min_amount", "step", "field"),
    [("0.3", "0.0001", "0.0001", None), ("0.00015", "0.0001", "0.0001", "params.display_qty"),
     ("0.00005", "0.0001", None, "params.display_qty"), ("0.3", None, None, None)],
)
def test_check_wants_display_qty_on_the_grid_and_above_the_minimum(display: str, min_amount: str | None, step: str | None, field: str | None) -> None:
    params = IcebergParams(display_qty=D(display))
    problem = I.check(params, D(1), None if min_amount is None else D(min_amount), None if step is None else D(step))
    assert (problem and problem[0]) == field


# -- whole intents ---------------------------------------------------------------------------------------------


def _intent(qty: str = "1", side: str = "buy", **params: Any) -> Any:
    values: dict[str, Any] = {"display_qty": D("0.3"), "timeout_seconds": D(10)}
    values.update(params)
    return new_intent(qty=D(qty), side=side, strategy="iceberg", params=IcebergParams(**values))


async def test_children_of_display_qty_one_after_another_the_last_takes_the_rest() -> None:
    kit, market = await supervised(rule="all")
    intent = _intent()

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    assert [(o.leg, o.qty) for o in market.placed] == [(1, D("0.3")), (2, D("0.3")), (3, D("0.3")), (4, D("0.1"))]
    assert report.reason == "filled" and order_violations(kit, intent) == []


async def test_a_partly_filled_child_holds_back_the_next_until_it_is_terminal() -> None:
    kit, market = await supervised(rule="nothing")
    kit.at(2, lambda: market.fill_working("0.5"))
    kit.at(4, lambda: market.fill_working(1))
    intent = _intent()

    await kit.send(intent)
    await kit.advance(3.9)
    assert len(market.placed) == 1 and market.working()[0].filled == D("0.15")  # half shown, no second child
    await kit.advance("0.2")
    assert len(market.placed) == 2 and market.placed[1].qty == D("0.3")  # the first filled: the next is shown
    assert order_violations(kit, intent) == []


@pytest.mark.parametrize("fallback", ["none", "market"])
async def test_the_end_of_the_budget_cancels_the_child_then_hands_off(fallback: str) -> None:
    kit, market = await supervised(rule="nothing")
    market.script(1, 0.5)  # the first child fills, the second half
    intent = _intent(fallback=fallback)

    await kit.send(intent)
    start = kit.clock.now_ns()
    report = await kit.run_until_finished(intent.intent_id)

    (cancel,) = kit.of(CancelOrder, intent.intent_id)
    assert cancel.client_order_id.endswith("-2") and cancel.ts_event - start == 10 * NS
    handed = kit.of(ExecutionTimedOut, intent.intent_id)
    if fallback == "market":
        assert [h.remaining_qty for h in handed] == [D("0.55")] and report.fallback_used
    else:
        assert handed == [] and report.reason == "iceberg budget over" and not report.fallback_used
    assert order_violations(kit, intent) == []


@pytest.mark.parametrize(("side", "limit", "rests"), [("buy", "99.50", True), ("buy", "100.05", False), ("sell", "100.50", True)])
async def test_children_rest_at_the_limit_price_whatever_the_touch(side: str, limit: str, rests: bool) -> None:
    kit, market = await supervised(rule="marketable")
    intent = _intent(side=side, limit_price=D(limit))

    await kit.send(intent)
    await kit.advance(1)

    assert {o.price for o in market.placed} == {D(limit)}
    assert (len(market.placed) == 1) == rests  # a limit through the touch fills child after child


async def test_children_refused_again_and_again_stop_at_the_spare_cap() -> None:
    kit, market = await supervised(rule="all")
    market.script(*["reject-retryable"] * 20)
    intent = _intent(qty="1", display_qty=D("0.5"))

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    assert len(kit.of(PlaceOrder, intent.intent_id)) == 2 + SPARE_CHILDREN
    assert report.reason.startswith(f"iceberg stopped after {2 + SPARE_CHILDREN} children")


async def test_intake_rejects_a_display_qty_off_the_grid() -> None:
    kit, market = await supervised()
    intent = _intent(display_qty=D("0.00015"))

    await kit.send(intent)

    (rejected,) = kit.of(IntentRejected, intent.intent_id)
    assert rejected.field == "params.display_qty"
