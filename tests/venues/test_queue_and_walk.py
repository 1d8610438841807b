"""The two headline behaviours on the recorded BTC/USDT data, checked against independent computations:
a resting order at the touch fills only after the displayed queue ahead of it has traded, and a 5 BTC
market buy walks several levels at the average price the book implies."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from venues.book import L2Book
from venues.config import MarketConfig, SAMPLE_FILE
from venues.marketdata import BookSnapshot, DepthUpdate, RecordingSource, TradePrint
from venues.paper import PaperExchange
from venues.simulator import PaperVenue

from paper_helpers import SYMBOL, check_order, full_recording, stepped

D = Decimal


def independent_first_fill(files: list[str], skip: int, is_buy: bool, price: Decimal, qty: Decimal
                           ) -> tuple[int, Decimal, str]:
    """When and how much a resting order first fills, computed straight from the recording.

    The queue model stated plainly: queue = level quantity when we join; prints at our price eat it;
    the level shrinking below it caps it; volume beyond the queue fills us; a print through our price or
    the opposite side reaching it fills us too.
    """
    book = L2Book(SYMBOL)
    events = RecordingSource(files, loop=True)
    for ev in itertools.islice(events, skip):
        if isinstance(ev, BookSnapshot):
            book.on_snapshot(ev)
        elif isinstance(ev, DepthUpdate):
            book.on_depth(ev)
    own_side, opp_side = (book.bids, book.asks) if is_buy else (book.asks, book.bids)
    queue = own_side.qty.get(price, D(0))
    for ev in events:
        if isinstance(ev, TradePrint):
            if ev.buyer_maker != is_buy:  # aggressor on our own side: not for us
                continue
            through = ev.price < price if is_buy else ev.price > price
            if through:
                return ev.ts, min(qty, ev.qty), "through"
            if ev.price == price:
                if ev.qty > queue:
                    return ev.ts, min(qty, ev.qty - queue), "queue"
                queue -= ev.qty
        elif isinstance(ev, (DepthUpdate, BookSnapshot)):
            if isinstance(ev, DepthUpdate):
                book.on_depth(ev)
            else:
                book.on_snapshot(ev)
            queue = min(queue, own_side.qty.get(price, D(0)))
            best_opp = opp_side.best()
            if best_opp is not None and (best_opp <= price if is_buy else best_opp >= price):
                return ev.ts, min(qty, opp_side.qty[best_opp]), "cross"
    raise AssertionError("never filled")


@pytest.mark.parametrize("start_after_s", [0, 20, 45, 90])
@pytest.mark.parametrize("is_buy", [True, False])
def test_a_resting_order_at_the_touch_fills_only_after_the_queue_ahead_traded(start_after_s: int, is_buy: bool) -> None:
    venue = PaperVenue(stepped(queue_cancel_model="back"))
    venue.replay.advance(start_after_s)
    eng = venue.engine
    ms = eng.markets[SYMBOL]
    price = ms.best(is_buy)
    assert price is not None
    displayed = ms.eff(is_buy, price)
    qty = D("0.05")
    skip = venue.replay.events

    order = eng.create_order("q", SYMBOL, "limit", "buy" if is_buy else "sell", qty, price)
    assert order.status == "open" and order.queue_ahead == displayed > 0
    reached = venue.replay.step_until(lambda: order.filled > 0, max_seconds=170)

    expected_ts, expected_qty, how = independent_first_fill([SAMPLE_FILE], skip, is_buy, price, qty)
    assert reached
    first = order.trades[0]
    assert (first.ts, first.qty, first.price, first.maker) == (expected_ts, expected_qty, price, True), how


def test_the_queue_shrinks_with_prints_at_our_price_before_any_fill() -> None:
    venue = PaperVenue(stepped(queue_cancel_model="back"))
    ms = venue.engine.markets[SYMBOL]
    price = ms.best(True)
    order = venue.engine.create_order("q", SYMBOL, "limit", "buy", D("0.01"), price)
    seen = [order.queue_ahead]
    while order.filled == 0:
        venue.replay.step()
        if order.queue_ahead != seen[-1] and order.filled == 0:
            seen.append(order.queue_ahead)
    assert seen == sorted(seen, reverse=True) and len(seen) > 1  # only ever moves forward, then fills


def test_prorata_cancels_never_fill_later_than_cancels_behind_us() -> None:
    def first_fill_ts(model: str) -> int:
        venue = PaperVenue(stepped(queue_cancel_model=model))
        venue.replay.advance(20)
        price = venue.engine.markets[SYMBOL].best(True)
        order = venue.engine.create_order("q", SYMBOL, "limit", "buy", D("0.05"), price)
        assert venue.replay.step_until(lambda: order.filled > 0, max_seconds=170)
        return order.trades[0].ts

    assert first_fill_ts("front") <= first_fill_ts("prorata") <= first_fill_ts("back")


def walk(levels: list[list[str]], amount: Decimal) -> tuple[Decimal, int]:
    """Average price and number of levels for `amount` taken from `levels` (best first)."""
    left, cost, used = amount, D(0), 0
    for price, qty in levels:
        take = min(D(qty), left)
        cost += take * D(price)
        left -= take
        used += 1
        if not left:
            return cost / amount, used
    raise AssertionError("book too thin")


async def market_buy_walk_check(venue: PaperVenue) -> None:
    ex = PaperExchange({"options": {"engine": venue}})
    book = venue.engine.order_book(SYMBOL)
    expected_avg, levels = walk(book["asks"], D(5))
    order = await ex.create_order(SYMBOL, "market", "buy", 5)
    check_order(ex, order)
    exact_avg = D(order["info"]["cummulativeQuoteQty"]) / D(order["info"]["executedQty"])
    assert levels >= 3 and len({t["price"] for t in order["trades"]}) == levels
    assert exact_avg == expected_avg
    assert order["average"] == pytest.approx(float(expected_avg), rel=1e-12)
    assert order["status"] == "closed" and order["filled"] == 5
    # the liquidity we took is gone from the book we show and from the next order's reach
    after = venue.engine.order_book(SYMBOL)
    assert D(after["asks"][0][0]) >= D(order["trades"][-1]["info"]["price"])
    second = await ex.create_order(SYMBOL, "market", "buy", 0.001)
    assert D(second["trades"][0]["info"]["price"]) >= D(order["trades"][-1]["info"]["price"])
    await ex.close()


async def test_a_5_btc_market_buy_walks_several_levels_at_the_book_average() -> None:
    await market_buy_walk_check(PaperVenue(stepped()))


async def test_a_5_btc_market_buy_on_the_full_recording_after_the_midnight_file_change() -> None:
    files = full_recording()
    venue = PaperVenue(stepped(markets=[MarketConfig(files=files)]))
    venue.replay.advance(6 * 60)  # into the 0809 file: the book carried over the file boundary
    assert venue.engine.markets[SYMBOL].book.synced
    await market_buy_walk_check(venue)


def test_taken_liquidity_comes_back_when_the_depth_stream_updates_the_level() -> None:
    venue = PaperVenue(stepped())
    ms = venue.engine.markets[SYMBOL]
    ask = ms.best(False)
    displayed = ms.eff(False, ask)
    venue.engine.create_order("t", SYMBOL, "market", "buy", displayed)
    assert ms.eff(False, ask) == 0 and ms.taken[False][ask] == displayed
    assert venue.replay.step_until(lambda: ask not in ms.taken[False], max_seconds=120)
    assert ms.eff(False, ask) == ms.book.asks.qty.get(ask, D(0))


def test_our_own_orders_trade_with_each_other_in_price_time_priority() -> None:
    venue = PaperVenue(stepped())
    eng = venue.engine
    ms = eng.markets[SYMBOL]
    ask = ms.best(False)
    displayed = ms.eff(False, ask)
    first = eng.create_order("alice", SYMBOL, "limit", "sell", D("0.3"), ask)
    second = eng.create_order("carol", SYMBOL, "limit", "sell", D("0.3"), ask)
    taker = eng.create_order("bob", SYMBOL, "market", "buy", displayed + D("0.4"))
    at_ask = sum(f.qty for f in taker.trades if f.price == ask)
    assert at_ask == displayed + D("0.4")  # market ahead, then alice in full, then carol in part
    assert (first.filled, first.status, second.filled) == (D("0.3"), "closed", D("0.1"))
    assert first.trades[0].maker and not taker.trades[0].maker
