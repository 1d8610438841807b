"""The whole system against paper venues with other venues' habits (venues/config.py `VenueQuirks`): trades
without ids, no fetchOrderTrades (a paged trade history), order/trade streams that die silently, and fees
charged in a third currency. Each run ends with the report's totals equal to the sum of its fills."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from bus.ops.client import execute
from messages import ExecutionCompleted, OrderFilled, OrderFinalized, OrderPlaced
from tests.e2e.conftest import Running, start_running, stop_running, stepped_config, system_config
from tests.helpers import assert_invariants, new_intent, wait_until
from venues.config import FaultRule, PaperVenueConfig, VenueQuirks
from venues.paper import PaperExchange

SYMBOL = "BTC/USDT"


async def _running(quirks: VenueQuirks, **reconciler: Any) -> Running:  # a market running at 20x
    options = {"poll_interval_s": 0.3, "confirm_interval_s": 0.05, **reconciler}
    return await start_running(system_config(
        paper_config=PaperVenueConfig(speed=20.0, quirks=quirks),
        actor_options={"reconciler": options},
    ))


async def _market(r: Running, qty: str) -> tuple[ExecutionCompleted, list[OrderFilled]]:
    intent = new_intent(qty=Decimal(qty))
    report = await execute(r.bus, intent, timeout=30)
    assert isinstance(report, ExecutionCompleted), report
    fills = await assert_invariants(report, r.recorder, r.exchange)
    return report, fills


@pytest.fixture
async def no_ids() -> AsyncIterator[Running]:
    r = await start_running(_stepped(VenueQuirks(trades_without_ids=True)))
    try:
        yield r
    finally:
        await stop_running(r)


async def _sell(r: Running, qty: Decimal) -> None:
    """Another account sells `qty` at market into the bids."""
    taker = PaperExchange({"options": {"natsUrl": r.system.url, "account": "taker"}})
    try:
        await taker.load_markets()
        await taker.create_order(SYMBOL, "market", "sell", float(qty))
    finally:
        await taker.close()


async def _rest_and_fill_twice(r: Running) -> tuple[Any, OrderPlaced]:
    """A 0.01 buy resting at the touch, then two sells in the same (frozen) instant that each fill half
    of it: two trades alike in every field."""
    book = await r.exchange.fetch_order_book(SYMBOL)
    ahead = Decimal(repr(book["bids"][0][1]))
    intent = new_intent(strategy="simple_limit", qty=Decimal("0.01"), params={"timeout_seconds": Decimal("60")})
    await r.bus.publish(intent)
    (placed,) = await r.recorder.wait_for(OrderPlaced, intent.intent_id, timeout=15)
    assert placed.price == Decimal(repr(book["bids"][0][0]))  # resting at the touch, behind `ahead`
    await _sell(r, ahead + Decimal("0.005"))
    await _sell(r, Decimal("0.005"))
    return intent, placed


async def test_identical_trades_without_ids_are_two_fills(no_ids: Running) -> None:
    r = no_ids
    intent, placed = await _rest_and_fill_twice(r)

    report = (await r.recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=15))[0]
    fills = await assert_invariants(report, r.recorder, r.exchange)
    assert report.status == "filled" and report.filled_qty == Decimal("0.01")
    venue_trades = await r.exchange.fetch_order_trades(placed.order_id, SYMBOL)
    assert [t["id"] for t in venue_trades] == [None, None]
    assert (venue_trades[0]["timestamp"], venue_trades[0]["price"], venue_trades[0]["amount"]) == (
        venue_trades[1]["timestamp"], venue_trades[1]["price"], venue_trades[1]["amount"])
    assert len(fills) == 2 and len({f.trade_id for f in fills}) == 2


def _stepped(quirks: VenueQuirks, faults: list[FaultRule] | None = None, **reconciler: Any) -> Any:
    config = stepped_config()
    config.paper_config = PaperVenueConfig(speed=0, profile="strict", quirks=quirks, faults=faults or [])
    config.actor_options["reconciler"] = {"poll_interval_s": 0.2, "confirm_interval_s": 0.05, **reconciler}
    return config


async def _sweep_bids(r: Running) -> None:
    """Another account sells into the bids, through any buy of ours resting at the touch."""
    await _sell(r, Decimal(20))


@pytest.fixture
async def paged() -> AsyncIterator[Running]:
    # Nothing comes from the streams, and the trade history answers at most 5 trades a call. Lookups of
    # intent "paged-*" orders fail until a second of (stepped) exchange time has passed.
    quirks = VenueQuirks(fetch_order_trades=False, my_trades_page_limit=5, silent_streams=True)
    faults = [FaultRule(kind="order_not_found", client_order_id_prefix="paged-", duration_s=1.0)]
    r = await start_running(_stepped(quirks, faults))  # asks 100 a page; the venue answers 5
    try:
        yield r
    finally:
        await stop_running(r)


async def test_without_fetch_order_trades_a_fill_behind_a_page_of_newer_trades_is_found(paged: Running) -> None:
    r = paged
    assert r.exchange.has["fetchOrderTrades"] is False
    intent = new_intent(intent_id="paged-1", strategy="simple_limit", params={"timeout_seconds": Decimal("60")})
    await r.bus.publish(intent)
    await r.recorder.wait_for(OrderPlaced, intent.intent_id, timeout=15)
    await _sweep_bids(r)  # our order fills while the reconciler cannot look it up yet
    newer = 0
    while newer <= 5:  # then more than a page of the account's trades lands after ours
        order = await r.exchange.create_order(SYMBOL, "market", "buy", 2)
        newer += len(order["trades"])
    await r.exchange.paper_control("advance", {"seconds": 1.5})  # lookups work again

    report = await r.recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=15)
    fills = await assert_invariants(report[0], r.recorder, r.exchange)
    assert report[0].status == "filled" and fills
    assert "trades missing" not in report[0].reason  # found in the window, nothing booked without its trade


@pytest.fixture
async def tiny_pages() -> AsyncIterator[Running]:
    # A page of 1 trade cannot hold two trades of one instant: paging by time cannot get past it.
    quirks = VenueQuirks(fetch_order_trades=False, my_trades_page_limit=1, silent_streams=True)
    r = await start_running(_stepped(quirks, trades_page_limit=1, trade_wait_tries=3, trade_wait_s=1.0))
    try:
        yield r
    finally:
        await stop_running(r)


async def test_trades_that_cannot_be_read_are_booked_after_a_bounded_wait_and_said_so(tiny_pages: Running) -> None:
    r = tiny_pages
    intent, _ = await _rest_and_fill_twice(r)

    report = (await r.recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=15))[0]
    fills = await assert_invariants(report, r.recorder, r.exchange)  # totals are the fills; no hang
    assert report.status == "filled" and report.filled_qty == Decimal("0.01")
    assert "trades missing" in report.reason
    (final,) = r.recorder.of(OrderFinalized, report.intent_id)
    assert final.filled_qty == Decimal("0.01") and "trades missing" in final.reason
    assert len(fills) == 2
    assert any("-cum-" in f.trade_id for f in fills)  # the one fill booked for the gap, named as such


@pytest.fixture
async def bnb_fees() -> AsyncIterator[Running]:
    r = await _running(VenueQuirks(fee_currency="BNB", fee_currency_price=Decimal("500")))
    try:
        yield r
    finally:
        await stop_running(r)


async def test_fees_in_a_third_currency_are_reported_per_currency(bnb_fees: Running) -> None:
    report, fills = await _market(bnb_fees, "0.5")

    assert fills and all(f.fee_currency == "BNB" and f.fee > 0 for f in fills)
    assert report.other_fees == {"BNB": sum((f.fee for f in fills), Decimal(0))}
    assert report.fees == Decimal(0)


@pytest.fixture
async def silent() -> AsyncIterator[Running]:
    r = await start_running(_stepped(VenueQuirks(silent_streams=True), max_poll_interval_s=30.0))
    try:
        yield r
    finally:
        await stop_running(r)


async def test_a_silently_dead_stream_does_not_slow_polling_so_a_fill_is_seen_soon(silent: Running) -> None:
    r = silent
    reconciler = r.system.hosts["reconciler"].actor
    intent = new_intent(strategy="simple_limit", params={"timeout_seconds": Decimal("60")})
    await r.bus.publish(intent)
    (placed,) = await r.recorder.wait_for(OrderPlaced, intent.intent_id, timeout=15)
    # While the order rests, the streams say nothing. Trusted, they would stretch the polls to 0.2, 0.4,
    # 0.8, 1.6, 3.2 s ... (10 polls take 200 s); untrusted after the default 3 s of silence, polls are
    # back at 0.2 s.
    start = reconciler.stats["polls"]
    await wait_until(lambda: reconciler.stats["polls"] - start >= 10, timeout=8)

    await _sweep_bids(r)
    (fill,) = await r.recorder.wait_for(OrderFilled, intent.intent_id, timeout=3)
    report = await r.recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=5)
    assert fill.client_order_id == placed.client_order_id
    assert report[0].status == "filled"
