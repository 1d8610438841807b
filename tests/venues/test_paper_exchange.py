"""PaperExchange speaks unified ccxt: every structure passes ccxt's own validators."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import ccxt
import pytest

from venues.paper import PaperExchange
from venues.simulator import PaperVenue

from paper_helpers import (SYMBOL, check_balance, check_market, check_order, check_order_book, check_ticker,
                           check_trade)


async def test_markets_order_book_ticker_and_balance_pass_ccxt_validators(exchange: PaperExchange) -> None:
    for market in exchange.markets.values():
        check_market(exchange, market)
    check_order_book(exchange, await exchange.fetch_order_book(SYMBOL, 20))
    await exchange.paper_control("advance", {"seconds": 5})  # some prints, so the ticker has last/high/low
    ticker = await exchange.fetch_ticker(SYMBOL)
    check_ticker(exchange, ticker)
    assert ticker["last"] is not None and ticker["bid"] < ticker["ask"]
    check_balance(exchange, await exchange.fetch_balance())


async def test_market_is_inferred_from_the_recording(exchange: PaperExchange) -> None:
    market = exchange.market(SYMBOL)
    assert (market["id"], market["base"], market["quote"]) == ("BTCUSDT", "BTC", "USDT")
    assert (market["precision"]["amount"], market["precision"]["price"]) == (0.00001, 0.01)
    assert market["limits"]["cost"]["min"] == 5 and market["maker"] == market["taker"] == 0.001


async def test_a_limit_order_far_from_the_touch_stays_open(exchange: PaperExchange) -> None:
    bid = (await exchange.fetch_order_book(SYMBOL))["bids"][0][0]
    order = await exchange.create_order(SYMBOL, "limit", "buy", 0.01, round(bid * 0.9, 2))
    check_order(exchange, order)
    await exchange.paper_control("advance", {"seconds": 30})
    fetched = await exchange.fetch_order(order["id"], SYMBOL)
    check_order(exchange, fetched, "fetchOrder")
    assert fetched["status"] == "open" and fetched["filled"] == 0
    assert [o["id"] for o in await exchange.fetch_open_orders(SYMBOL)] == [order["id"]]


async def test_a_marketable_limit_order_fills_and_closes(exchange: PaperExchange) -> None:
    ask = (await exchange.fetch_order_book(SYMBOL))["asks"][0][0]
    order = await exchange.create_order(SYMBOL, "limit", "buy", 0.5, ask + 50)
    check_order(exchange, order)
    assert order["status"] == "closed" and order["filled"] == 0.5 and order["remaining"] == 0
    assert order["trades"] and all(t["takerOrMaker"] == "taker" for t in order["trades"])
    trades = await exchange.fetch_my_trades(SYMBOL)
    for trade in trades:
        check_trade(exchange, trade)
    assert sum(Decimal(t["info"]["qty"]) for t in trades) == Decimal("0.5")
    closed = await exchange.fetch_closed_orders(SYMBOL)
    assert [o["id"] for o in closed] == [order["id"]]
    for o in closed:
        check_order(exchange, o, "fetchClosedOrders")


async def test_exact_decimal_strings_are_kept_in_info(exchange: PaperExchange) -> None:
    order = await exchange.create_order(SYMBOL, "market", "buy", 1.23457)
    assert order["info"]["executedQty"] == "1.23457"
    cost = sum(Decimal(t["info"]["price"]) * Decimal(t["info"]["qty"]) for t in order["trades"])
    assert Decimal(order["info"]["cummulativeQuoteQty"]) == cost


async def test_fetch_order_by_client_order_id_without_id(exchange: PaperExchange) -> None:
    order = await exchange.create_order(SYMBOL, "limit", "sell", 0.01, 90000, {"clientOrderId": "intent-1"})
    found = await exchange.fetch_order(None, SYMBOL, {"clientOrderId": "intent-1"})
    check_order(exchange, found, "fetchOrder")
    assert found["id"] == order["id"] and found["clientOrderId"] == "intent-1"
    with pytest.raises(ccxt.OrderNotFound):
        await exchange.fetch_order(None, SYMBOL, {"clientOrderId": "never-sent"})


async def test_a_used_client_order_id_is_refused(exchange: PaperExchange) -> None:
    await exchange.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "once"})
    await exchange.cancel_order(None, SYMBOL, {"clientOrderId": "once"})
    with pytest.raises(ccxt.DuplicateOrderId):
        await exchange.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "once"})


async def test_cancel_releases_the_reservation_and_a_second_cancel_is_order_not_found(exchange: PaperExchange) -> None:
    order = await exchange.create_order(SYMBOL, "limit", "buy", 1, 50000)
    balance = await exchange.fetch_balance()
    assert balance["used"]["USDT"] == 50000 and balance["free"]["USDT"] == 10_000_000 - 50000
    canceled = await exchange.cancel_order(order["id"], SYMBOL)
    check_order(exchange, canceled, "cancelOrder")
    assert canceled["status"] == "canceled"
    assert (await exchange.fetch_balance())["used"]["USDT"] == 0
    with pytest.raises(ccxt.OrderNotFound):
        await exchange.cancel_order(order["id"], SYMBOL)


@pytest.mark.parametrize(("amount", "price", "params", "error"), [
    (0.01, 50000.001, {}, None),                  # rounded by price_to_precision like any ccxt class
    (0.00001, 50000, {}, ccxt.InvalidOrder),      # cost 0.5 USDT < min cost 5
    (1000, 50000, {}, ccxt.InsufficientFunds),    # 50M USDT > 10M
    (0.01, 50000, {"timeInForce": "XYZ"}, ccxt.InvalidOrder),
])
async def test_market_limits_are_enforced_with_ccxt_exceptions(exchange: PaperExchange, amount: float,
                                                                price: float, params: dict, error: type | None) -> None:
    if error is None:
        order = await exchange.create_order(SYMBOL, "limit", "buy", amount, price, params)
        assert order["info"]["price"] == "50000"
    else:
        with pytest.raises(error):
            await exchange.create_order(SYMBOL, "limit", "buy", amount, price, params)


async def test_post_only_that_would_cross_is_rejected(exchange: PaperExchange) -> None:
    ask = (await exchange.fetch_order_book(SYMBOL))["asks"][0][0]
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        await exchange.create_order(SYMBOL, "limit", "buy", 0.01, ask, {"postOnly": True})
    order = await exchange.create_order(SYMBOL, "limit", "buy", 0.01, ask - 1, {"timeInForce": "PO"})
    assert order["postOnly"] is True and order["status"] == "open"


async def test_ioc_fills_what_it_can_and_fok_all_or_nothing(exchange: PaperExchange) -> None:
    book = await exchange.fetch_order_book(SYMBOL)
    ask, ask_qty = book["asks"][0]
    ioc = await exchange.create_order(SYMBOL, "limit", "buy", round(ask_qty + 1, 5), ask, {"timeInForce": "IOC"})
    check_order(exchange, ioc)
    assert ioc["status"] == "canceled" and ioc["filled"] == ask_qty and ioc["info"]["status"] == "EXPIRED"
    ask2, qty2 = (await exchange.fetch_order_book(SYMBOL))["asks"][0]
    fok = await exchange.create_order(SYMBOL, "limit", "buy", round(qty2 + 1, 5), ask2, {"timeInForce": "FOK"})
    assert fok["status"] == "canceled" and fok["filled"] == 0
    fok_ok = await exchange.create_order(SYMBOL, "limit", "buy", qty2, ask2, {"timeInForce": "FOK"})
    assert fok_ok["status"] == "closed" and fok_ok["filled"] == qty2


async def test_watch_orders_and_my_trades_deliver_updates(exchange: PaperExchange) -> None:
    orders_task = asyncio.create_task(exchange.watch_orders(SYMBOL))
    trades_task = asyncio.create_task(exchange.watch_my_trades(SYMBOL))
    await asyncio.sleep(0)  # let both subscribe (in-process subscription is synchronous)
    while not exchange._streams or len(exchange._streams) < 2:
        await asyncio.sleep(0)
    order = await exchange.create_order(SYMBOL, "market", "sell", 0.2, None, {"clientOrderId": "w1"})
    updates = await asyncio.wait_for(orders_task, 2)
    trades = await asyncio.wait_for(trades_task, 2)
    for o in updates:
        check_order(exchange, o, "watchOrders")
    for t in trades:
        check_trade(exchange, t, "watchMyTrades")
    assert updates[-1]["id"] == order["id"] and updates[-1]["status"] == "closed"
    assert sum(Decimal(t["info"]["qty"]) for t in trades) == Decimal("0.2")


async def test_watch_order_book_returns_now_then_each_change(exchange: PaperExchange) -> None:
    first = await exchange.watch_order_book(SYMBOL, 10)
    check_order_book(exchange, first, "watchOrderBook")
    nxt = asyncio.create_task(exchange.watch_order_book(SYMBOL, 10))
    await asyncio.sleep(0)
    await exchange.paper_control("advance", {"seconds": 1})
    book = await asyncio.wait_for(nxt, 2)
    check_order_book(exchange, book, "watchOrderBook")
    assert book["timestamp"] > first["timestamp"] and len(book["bids"]) == 10


async def test_two_accounts_on_one_venue_have_separate_balances(venue: PaperVenue) -> None:
    alice = PaperExchange({"options": {"engine": venue, "account": "alice"}})
    bob = PaperExchange({"apiKey": "bob", "options": {"engine": venue}})
    await alice.create_order(SYMBOL, "market", "buy", 1)
    assert (await alice.fetch_balance())["total"]["BTC"] > 100
    assert (await bob.fetch_balance())["total"]["BTC"] == 100
    assert await bob.fetch_closed_orders() == []
    await alice.close()
    await bob.close()
