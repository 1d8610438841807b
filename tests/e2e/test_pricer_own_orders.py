"""The pricer takes our own resting orders out of the book it quotes from (paper venue, real nats-server).

A step-driven synthetic market with a two-tick spread; our buy one tick above its best bid makes the
venue's book a one-tick spread whose best bid is only us. Quoting from that book, "touch" would be our own
price and "inside" could not improve on it, so a new attempt would re-place where we already are."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from messages import PriceQuoted, PriceRequested
from tests.e2e.conftest import Running, start_running, stop_running, system_config
from venues.config import MarketConfig, PaperVenueConfig, SyntheticConfig

SYMBOL = "BTC/USDT"
TICK = Decimal("0.01")


@pytest.fixture
async def pricer_only() -> AsyncIterator[Running]:
    market = MarketConfig(synthetic=SyntheticConfig(symbol=SYMBOL, spread_ticks=2, start_price=Decimal("60000")))
    config = system_config(
        actors=("pricer",),
        paper_config=PaperVenueConfig(speed=0, markets=[market], book_publish_interval_ms=0, profile="strict"),
        actor_options={"pricer": {"max_age_s": 3600.0}},
    )
    r = await start_running(config)
    try:
        yield r
    finally:
        await stop_running(r)


async def _quote(r: Running, intent_id: str, side: str, mode: str) -> PriceQuoted:
    await r.bus.publish(PriceRequested(intent_id=intent_id, venue="paper", symbol=SYMBOL, attempt=1, side=side,  # type: ignore[arg-type]
                                       mode=mode, qty=Decimal("0.01")))  # type: ignore[arg-type]
    (quote,) = await r.recorder.wait_for(PriceQuoted, intent_id, timeout=15)
    return quote


async def test_our_order_alone_at_the_best_bid_is_not_the_touch_we_quote_from(pricer_only: Running) -> None:
    r = pricer_only
    book = await r.exchange.fetch_order_book(SYMBOL)
    bid, ask = Decimal(repr(book["bids"][0][0])), Decimal(repr(book["asks"][0][0]))
    assert ask - bid == 2 * TICK
    ours = await r.exchange.create_order(SYMBOL, "limit", "buy", 0.01, float(bid + TICK), {"clientOrderId": "own-1"})
    seen = await r.exchange.fetch_order_book(SYMBOL)
    assert Decimal(repr(seen["bids"][0][0])) == bid + TICK  # the venue shows us: a one-tick spread
    try:
        touch = await _quote(r, "own-touch", "buy", "touch")
        inside = await _quote(r, "own-inside", "buy", "inside")
        sell = await _quote(r, "own-sell", "sell", "touch")
    finally:
        await r.exchange.cancel_order(ours["id"], SYMBOL)

    # the book minus our 0.01: the best bid is the market's again
    assert (touch.bid, touch.ask, touch.price) == (bid, ask, bid)
    assert (inside.bid, inside.price) == (bid, bid + TICK)  # one tick inside the others' bid
    assert (sell.bid, sell.ask, sell.price) == (bid, ask, ask)


async def test_our_order_inside_a_level_of_others_leaves_the_level(pricer_only: Running) -> None:
    r = pricer_only
    book = await r.exchange.fetch_order_book(SYMBOL)
    bid, ask = Decimal(repr(book["bids"][0][0])), Decimal(repr(book["asks"][0][0]))
    bid_qty = Decimal(repr(book["bids"][0][1]))
    ours = await r.exchange.create_order(SYMBOL, "limit", "buy", 0.01, float(bid), {"clientOrderId": "own-2"})
    try:
        touch = await _quote(r, "own-level", "buy", "touch")
    finally:
        await r.exchange.cancel_order(ours["id"], SYMBOL)
    assert bid_qty > Decimal("0.01")
    assert (touch.bid, touch.price, touch.ask) == (bid, bid, ask)


async def test_orders_placed_and_canceled_after_the_first_quote_are_learnt_from_the_order_stream(pricer_only: Running) -> None:
    from tests.helpers import wait_until

    r = pricer_only
    pricer = r.system.hosts["pricer"].actor
    first = await _quote(r, "own-s0", "buy", "touch")  # opens the book and own-order streams, lists none
    bid, ask = first.bid, first.ask
    ours = await r.exchange.create_order(SYMBOL, "limit", "buy", 0.01, float(bid + TICK), {"clientOrderId": "own-3"})
    key = ("paper", SYMBOL)
    # the venue's book stream shows our order, and its order stream told the pricer it is ours
    await wait_until(lambda: pricer._books[key].bids[0][0] == bid + TICK and pricer._own[key].open)
    during = await _quote(r, "own-s1", "buy", "inside")
    await r.exchange.cancel_order(ours["id"], SYMBOL)
    await wait_until(lambda: pricer._books[key].bids[0][0] == bid and not pricer._own[key].open)
    after = await _quote(r, "own-s2", "buy", "inside")

    assert (during.bid, during.price) == (bid, bid + TICK)
    assert (after.bid, after.price, after.ask) == (bid, bid + TICK, ask)
