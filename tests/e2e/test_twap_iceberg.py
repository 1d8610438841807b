"""TWAP and iceberg end to end: the strategies added as plug-ins, on the paper exchange (Binance's semantics)
with the market stepped by the test, on a real nats-server. The rules themselves are tested fast through
the actor kit (`tests/actors/`); here the choreography runs them for real, including from the command line.
"""

from __future__ import annotations

import asyncio
from decimal import ROUND_FLOOR, Decimal

import pytest

from bus.ops import cli
from bus.ops.client import execute
from messages import (
    ExecutionCompleted,
    ExecutionTimedOut,
    IcebergParams,
    IntentAccepted,
    OrderFinalized,
    PlaceOrder,
    SubmitIntent,
    TwapParams,
    decode,
)
from tests.e2e.conftest import Running
from tests.helpers import assert_invariants, new_intent

D = Decimal
NS = 1_000_000_000
TICK = D("0.01")


async def run(r: Running, intent: SubmitIntent, timeout: float = 30) -> ExecutionCompleted:
    report = await execute(r.bus, intent, timeout=timeout)
    assert isinstance(report, ExecutionCompleted), report
    await assert_invariants(report, r.recorder, r.exchange)
    return report


async def top_of_book(r: Running) -> tuple[Decimal, Decimal]:
    book = await r.exchange.fetch_order_book("BTC/USDT")
    return D(repr(book["bids"][0][0])), D(repr(book["asks"][0][0]))


def orders(r: Running, intent_id: str) -> list[PlaceOrder]:
    return [c for c in r.recorder.of(PlaceOrder, intent_id) if c.origin == "supervisor"]


def assert_one_order_at_a_time(r: Running, intent_id: str) -> None:
    """Each order placed only once every earlier one is confirmed terminal, read off the bus."""
    messages = [m for m in r.recorder.messages if m.intent_id == intent_id]
    finalized: set[str] = set()
    placed: list[str] = []
    for msg in messages:
        if isinstance(msg, OrderFinalized):
            finalized.add(msg.client_order_id)
        elif isinstance(msg, PlaceOrder) and msg.client_order_id not in placed:
            assert all(p in finalized for p in placed), f"{msg.client_order_id} placed while {set(placed) - finalized} worked"
            placed.append(msg.client_order_id)


# -- TWAP -------------------------------------------------------------------------------------------------


async def test_twap_works_each_slice_in_its_own_interval_and_completes_filled(stepped: Running) -> None:
    intent = new_intent(strategy="twap", qty=D("0.05"), params=TwapParams(horizon_seconds=D(6), slices=4))

    report = await run(stepped, intent)

    assert report.status == "filled" and report.filled_qty == intent.qty
    placed = orders(stepped, intent.intent_id)
    assert len(placed) >= 4
    if report.fallback_used:
        # Only the last slice may leave anything to the fallback: its crossing attempt did not fit before the
        # horizon (a cancel takes the venue about half a second to confirm); no limit order past the horizon.
        (accepted,) = stepped.recorder.of(IntentAccepted, intent.intent_id)
        (timed_out,) = stepped.recorder.of(ExecutionTimedOut, intent.intent_id)
        assert timed_out.remaining_qty <= D("0.0125")
        assert all(p.ts_event <= accepted.deadline_ns for p in placed)
    (accepted,) = stepped.recorder.of(IntentAccepted, intent.intent_id)
    interval = 6 * NS // 4
    legs = sorted({p.leg for p in placed})
    assert legs == [0, 1, 2, 3], legs
    for leg in legs:
        first = min((p for p in placed if p.leg == leg), key=lambda p: p.ts_event)
        # A slice begins no earlier than its start; the step-driven book does not move, so each slice's
        # crossing attempt fills it and the next slice's first order is a full slice on the touch.
        assert first.ts_event >= accepted.ts_event + leg * interval - 5_000_000, (leg, first.ts_event - accepted.ts_event)
        assert first.qty == D("0.0125"), (leg, first.qty)
    assert_one_order_at_a_time(stepped, intent.intent_id)


async def test_twap_never_prices_past_its_limit_and_without_fallback_reports_what_filled(stepped: Running) -> None:
    bid, _ask = await top_of_book(stepped)
    limit = bid - D("5")
    intent = new_intent(
        strategy="twap", qty=D("0.02"),
        params=TwapParams(horizon_seconds=D(2), slices=2, attempts_per_slice=2, limit_price=limit, fallback="none"),
    )

    report = await run(stepped, intent)

    placed = orders(stepped, intent.intent_id)
    assert placed and all(p.price is not None and p.price <= limit for p in placed)
    assert {p.leg for p in placed} == {0, 1}
    assert report.status == "unfilled" and report.filled_qty == 0 and not report.fallback_used
    assert "twap horizon over" in report.reason
    assert stepped.recorder.of(ExecutionTimedOut, intent.intent_id) == []


async def test_twap_hands_what_is_left_after_the_last_slice_to_the_market_fallback(stepped: Running) -> None:
    """A sell slice at the touch that never fills, one attempt per slice: the fallback takes all of it."""
    intent = new_intent(
        strategy="twap", side="sell", qty=D("0.02"),
        params=TwapParams(horizon_seconds=D("1.2"), slices=2, attempts_per_slice=1, fallback="market"),
    )

    report = await run(stepped, intent)

    (timed_out,) = stepped.recorder.of(ExecutionTimedOut, intent.intent_id)
    assert timed_out.remaining_qty == intent.qty - timed_out.filled_qty
    assert report.status == "filled" and report.fallback_used
    assert_one_order_at_a_time(stepped, intent.intent_id)


# -- iceberg ----------------------------------------------------------------------------------------------


async def test_iceberg_shows_one_child_of_the_display_size_at_a_time_until_filled(stepped: Running) -> None:
    _bid, ask = await top_of_book(stepped)
    intent = new_intent(
        strategy="iceberg", qty=D("0.025"), params=IcebergParams(display_qty=D("0.01"), limit_price=ask),
    )

    report = await run(stepped, intent)

    placed = orders(stepped, intent.intent_id)
    assert [p.qty for p in placed] == [D("0.01"), D("0.01"), D("0.005")]
    assert all(p.price == ask for p in placed)
    assert report.status == "filled" and report.filled_qty == intent.qty
    assert_one_order_at_a_time(stepped, intent.intent_id)


async def test_iceberg_whose_child_does_not_fill_in_the_budget_is_canceled_and_reports_unfilled(stepped: Running) -> None:
    bid, _ask = await top_of_book(stepped)
    far = ((bid * D("0.99")) / TICK).to_integral_value(rounding=ROUND_FLOOR) * TICK
    intent = new_intent(
        strategy="iceberg", qty=D("0.03"),
        params=IcebergParams(display_qty=D("0.01"), limit_price=far, timeout_seconds=D("0.5")),
    )

    report = await run(stepped, intent)

    (child,) = orders(stepped, intent.intent_id)
    assert child.qty == D("0.01") and child.price == far
    (final,) = stepped.recorder.of(OrderFinalized, intent.intent_id)
    assert final.status == "canceled"
    assert report.status == "unfilled" and "iceberg budget over" in report.reason


# -- from the command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "at_least"),
    [
        pytest.param(["--strategy", "twap", "--param", "horizon_seconds=6", "--param", "slices=4"], 4, id="twap"),
        pytest.param(["--strategy", "iceberg", "--param", "display_qty=0.02", "--param", "limit_price={ask}"], 3, id="iceberg"),
    ],
)
async def test_submit_from_the_command_line_completes_filled(
    stepped: Running, capsys: pytest.CaptureFixture[str], argv: list[str], at_least: int
) -> None:
    intent_id = f"cli-{argv[1]}-{stepped.system.url[-5:]}"
    _bid, ask = await top_of_book(stepped)  # (the stepped book does not move: an iceberg at the ask fills)
    argv = [a.format(ask=ask) for a in argv]
    capsys.readouterr()
    code = await asyncio.to_thread(
        cli.main,
        ["submit", "--symbol", "BTC/USDT", "--side", "buy", "--qty", "0.05", *argv, "--intent-id", intent_id,
         "--json", "--timeout", "60", "--nats", stepped.system.url],
    )
    out = capsys.readouterr().out

    assert code == 0, out
    report = decode(out.strip().splitlines()[-1].encode())
    assert isinstance(report, ExecutionCompleted) and report.status == "filled", report
    assert report.strategy == argv[1]
    assert len(orders(stepped, intent_id)) >= at_least
    await assert_invariants(report, stepped.recorder, stepped.exchange)
