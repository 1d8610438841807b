"""Aggressive limit: attempts escalating touch -> inside -> cross, each in its own budget; an attempt priced
like the working order keeps it (`OrderKept`); then the market fallback (or none)."""

from __future__ import annotations

import pytest

from actors.strategies.aggressive_limit import AggressiveLimit
from actors.strategies.base import (
    AllFinal, Arrived, AskPrice, AttemptExpired, CancelWorking, HandOff, Place, Quoted, Reprice, Woke,
)
from messages import (
    AggressiveLimitParams, AttemptTimedOut, CancelOrder, ExecutionTimedOut, OrderKept, PlaceOrder, PriceRequested,
)
from tests.actors.kit import NS, D, order_violations, quote, supervised, view
from tests.helpers import new_intent

A = AggressiveLimit()
P = AggressiveLimitParams(total_timeout_seconds=D(9), max_retries=3)


def test_arrival_asks_for_the_touch() -> None:
    assert A.decide(P, view(), Arrived(quote(attempt=0, mode="arrival"))) == AskPrice(attempt=1, mode="touch")


@pytest.mark.parametrize(
    ("params", "now", "deadline", "expected_deadline"),
    [
        (P, 0, 9, 3),  # total / max_retries each
        (P, 8, 9, 9),  # never past the whole budget
        (AggressiveLimitParams(total_timeout_seconds=D(9), attempt_timeout_seconds=D(1)), 2, 9, 3),
    ],
)
def test_each_attempt_gets_its_own_budget(params: AggressiveLimitParams, now: int, deadline: int, expected_deadline: int) -> None:
    v = view(attempt=1, now_ns=now * NS, deadline_ns=deadline * NS)
    decision = A.decide(params, v, Quoted(quote("100.01", mode="inside")))
    assert decision == Place(attempt=1, order_type="limit", price=D("100.01"), deadline_ns=expected_deadline * NS)


def test_the_break_even_bound_caps_a_crossing_price() -> None:
    params = AggressiveLimitParams(trigger_fill_price=D("100.01"))
    decision = A.decide(params, view(attempt=3, now_ns=NS), Quoted(quote("100.02", mode="cross")))
    assert isinstance(decision, Place) and decision.price == D("100.01")


@pytest.mark.parametrize(
    ("attempt", "now", "event", "expected"),
    [
        (1, 3, AttemptExpired(), Reprice(attempt=2, mode="inside")),
        (2, 6, AttemptExpired(), Reprice(attempt=3, mode="cross")),
        (3, 9, AttemptExpired(), CancelWorking(announce=True)),  # the last attempt
        (1, 9, AttemptExpired(), CancelWorking(announce=True)),  # the budget is over
        (1, 2, AllFinal(), AskPrice(attempt=2, mode="inside")),  # ended early (canceled by the venue, a partial)
        (2, 5, AllFinal(), AskPrice(attempt=3, mode="cross")),
        (3, 8, AllFinal(), HandOff("budget exhausted", fallback=True)),
        (2, 9, Woke(), HandOff("budget exhausted", fallback=True)),
    ],
)
def test_escalation_and_the_end(attempt: int, now: int, event: object, expected: object) -> None:
    assert A.decide(P, view(attempt=attempt, now_ns=now * NS, deadline_ns=9 * NS), event) == expected  # type: ignore[arg-type]


def test_fallback_none_hands_off_without_the_market() -> None:
    params = AggressiveLimitParams(fallback="none", max_retries=1)
    assert A.decide(params, view(attempt=1, now_ns=NS), AllFinal()) == HandOff("budget exhausted", fallback=False)


def _intent(**params: object) -> object:
    values: dict[str, object] = {"total_timeout_seconds": D(9), "max_retries": 3}
    values.update(params)
    return new_intent(qty=D(1), strategy="aggressive_limit", params=AggressiveLimitParams(**values))  # type: ignore[arg-type]


async def test_attempts_escalate_touch_inside_cross_then_the_fallback_takes_the_rest() -> None:
    kit, market = await supervised(rule="nothing")
    intent = _intent()

    await kit.send(intent)
    start = kit.clock.now_ns()
    report = await kit.run_until_finished(intent.intent_id)

    asked = [(m.attempt, m.mode) for m in kit.of(PriceRequested, intent.intent_id) if m.attempt]
    assert list(dict.fromkeys(asked)) == [(1, "touch"), (2, "inside"), (3, "cross")]
    placed = [(o.attempt, o.price, (o.ts_event - start) // NS) for o in kit.of(PlaceOrder, intent.intent_id)]
    assert placed[:3] == [(1, D("100.00"), 0), (2, D("100.01"), 3), (3, D("100.02"), 6)]
    (timed_out,) = kit.of(ExecutionTimedOut, intent.intent_id)
    assert timed_out.remaining_qty == D(1) and timed_out.ts_event - start == 9 * NS
    assert placed[3][0] == 0 and kit.of(PlaceOrder, intent.intent_id)[3].origin == "market_fallback"
    assert report.reason == "filled" and report.fallback_used and report.attempts == 3
    assert [m.attempt for m in kit.of(AttemptTimedOut, intent.intent_id)] == [1, 2, 3]
    assert order_violations(kit, intent) == []


async def test_a_crossing_attempt_that_fills_ends_it_without_the_fallback() -> None:
    kit, market = await supervised(rule="marketable")
    intent = _intent()

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    assert [o.price for o in kit.of(PlaceOrder, intent.intent_id)] == [D("100.00"), D("100.01"), D("100.02")]
    assert report.reason == "filled" and not report.fallback_used


async def test_an_attempt_priced_like_the_working_order_keeps_it() -> None:
    """One-tick spread: "inside" is the touch, so attempt 2 keeps attempt 1's order (its queue place)."""
    kit, market = await supervised(rule="nothing", bid="100.00", ask="100.01")
    intent = _intent(fallback="none")

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    (kept,) = kit.of(OrderKept, intent.intent_id)
    assert kept.attempt == 2 and kept.client_order_id == f"{intent.intent_id}-1" and kept.price == D("100.00")
    orders = [(o.client_order_id[-2:], o.price) for o in kit.of(PlaceOrder, intent.intent_id)]
    assert orders == [("-1", D("100.00")), ("-3", D("100.01"))]  # attempt 2 placed nothing of its own
    assert [c.client_order_id[-2:] for c in kit.of(CancelOrder, intent.intent_id)] == ["-1", "-3"]
    assert report.attempts == 3 and report.reason == "budget exhausted" and not report.fallback_used
    assert kit.of(ExecutionTimedOut, intent.intent_id) == []


async def test_break_even_keeps_every_attempt_at_the_bound() -> None:
    kit, market = await supervised(rule="nothing")
    intent = _intent(trigger_fill_price=D("100.00"), fallback="none")

    await kit.send(intent)
    await kit.run_until_finished(intent.intent_id)

    assert [o.price for o in kit.of(PlaceOrder, intent.intent_id)] == [D("100.00")]  # kept twice
    assert [k.attempt for k in kit.of(OrderKept, intent.intent_id)] == [2, 3]


async def test_the_fallback_takes_only_what_the_attempts_left() -> None:
    kit, market = await supervised(rule="nothing")
    market.script(0.4, 0, 0.25)
    intent = _intent()

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    (timed_out,) = kit.of(ExecutionTimedOut, intent.intent_id)
    assert (timed_out.filled_qty, timed_out.remaining_qty) == (D("0.55"), D("0.45"))
    fallback = market.orders[f"{intent.intent_id}-F"]
    assert fallback.cmd.qty == D("0.45") and fallback.filled == D("0.45")
    assert [o.qty for o in market.placed] == [D(1), D("0.6"), D("0.6"), D("0.45")]
    assert report.fallback_used and order_violations(kit, intent) == []


async def test_a_final_rejection_ends_it_without_the_fallback() -> None:
    kit, market = await supervised(rule="nothing")
    market.script("reject")
    intent = _intent()

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    assert "rejected" in report.reason and not report.fallback_used
    assert len(kit.of(PlaceOrder, intent.intent_id)) == 1


async def test_a_pricer_that_keeps_refusing_ends_it_without_a_blind_fallback() -> None:
    kit, market = await supervised(rule="nothing")
    intent = _intent()
    await kit.send(intent)  # attempt 1 works
    market.set_book(unavailable="book stale")

    report = await kit.run_until_finished(intent.intent_id)

    assert "no price" in report.reason and not report.fallback_used
    assert kit.of(ExecutionTimedOut, intent.intent_id) == []
    assert len(kit.of(PlaceOrder, intent.intent_id)) == 1


async def test_a_pricer_that_refuses_for_a_moment_is_asked_again() -> None:
    kit, market = await supervised(rule="marketable")
    market.set_book(unavailable="book crossed")
    kit.at("0.5", lambda: market.set_book(unavailable=""))
    intent = _intent()

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id)

    assert report.reason == "filled" and len(kit.of(PlaceOrder, intent.intent_id)) == 3
