"""fetch_order_trades: the trades of one order, from the order record (not the bounded trade history)."""

from __future__ import annotations

from decimal import Decimal

import ccxt
import pytest

from venues.paper import PaperExchange
from venues.simulator import PaperVenue

from paper_helpers import SYMBOL, RunningVenue, check_trade, stepped


def ids(trades: list[dict]) -> list[int]:
    return sorted(int(t["id"]) for t in trades)  # ccxt sorts same-millisecond trades by id as a string


def qty_sum(trades: list[dict]) -> Decimal:
    return sum((Decimal(t["info"]["qty"]) for t in trades), Decimal(0))


async def test_a_partially_filled_order_returns_the_trades_so_far(exchange: PaperExchange) -> None:
    assert exchange.has["fetchOrderTrades"] is True
    bid = (await exchange.fetch_order_book(SYMBOL))["bids"][0][0]
    order = await exchange.create_order(SYMBOL, "limit", "buy", 5, bid, {"clientOrderId": "part-1"})
    reached = await exchange.paper_control("advance_until", {"clientOrderId": "part-1", "until": "fill"})
    assert reached["reached"]
    fetched = await exchange.fetch_order(order["id"], SYMBOL)
    assert fetched["status"] == "open" and 0 < fetched["filled"] < 5  # partial, still resting
    trades = await exchange.fetch_order_trades(order["id"], SYMBOL)
    assert trades and all(t["order"] == order["id"] and t["takerOrMaker"] == "maker" for t in trades)
    for trade in trades:
        check_trade(exchange, trade, "fetchOrderTrades")
    assert qty_sum(trades) == Decimal(fetched["info"]["executedQty"])


async def test_a_filled_order_returns_all_its_trades_and_only_its_own(exchange: PaperExchange) -> None:
    other = await exchange.create_order(SYMBOL, "market", "sell", 0.3)
    order = await exchange.create_order(SYMBOL, "market", "buy", 3)
    assert order["status"] == "closed"
    trades = await exchange.fetch_order_trades(order["id"], SYMBOL)
    assert len(trades) > 1  # walked several levels
    assert ids(trades) == ids(order["trades"])
    assert {t["order"] for t in trades} == {order["id"]} != {other["id"]}
    assert qty_sum(trades) == Decimal(order["info"]["executedQty"]) == Decimal(3)
    by_client_id = await exchange.fetch_order_trades(None, SYMBOL, None, None, {"clientOrderId": order["clientOrderId"]})
    assert ids(by_client_id) == ids(trades)
    assert len(await exchange.fetch_order_trades(order["id"], SYMBOL, None, 2)) == 2  # ccxt's limit applies


async def test_an_unknown_or_foreign_order_id_is_order_not_found(venue: PaperVenue) -> None:
    alice = PaperExchange({"options": {"engine": venue, "account": "alice"}})
    bob = PaperExchange({"options": {"engine": venue, "account": "bob"}})
    order = await alice.create_order(SYMBOL, "market", "buy", 0.1)
    with pytest.raises(ccxt.OrderNotFound):
        await alice.fetch_order_trades("999999", SYMBOL)
    with pytest.raises(ccxt.OrderNotFound):
        await bob.fetch_order_trades(order["id"], SYMBOL)  # another account's order does not exist for bob
    with pytest.raises(ccxt.ArgumentsRequired):
        await alice.fetch_order_trades(None, SYMBOL)
    await alice.close()
    await bob.close()


async def test_trades_out_of_the_account_history_are_still_returned_while_the_order_is_known() -> None:
    ex = PaperExchange({"options": {"engine": PaperVenue(stepped(history_limit=2))}})
    await ex.load_markets()
    order = await ex.create_order(SYMBOL, "market", "buy", 3)
    assert len(order["trades"]) > 2
    assert len(await ex.fetch_my_trades(SYMBOL)) == 2  # the account history kept the last two only
    trades = await ex.fetch_order_trades(order["id"], SYMBOL)
    assert ids(trades) == ids(order["trades"])
    assert qty_sum(trades) == Decimal(3)
    for _ in range(2):  # two newer closed orders push this one out of the closed-order history
        await ex.create_order(SYMBOL, "market", "buy", 0.1)
    with pytest.raises(ccxt.OrderNotFound):
        await ex.fetch_order(order["id"], SYMBOL)
    with pytest.raises(ccxt.OrderNotFound):  # same answer as fetch_order: the venue forgot the order
        await ex.fetch_order_trades(order["id"], SYMBOL)
    await ex.close()


async def test_fetch_order_trades_over_nats(nats_venue: RunningVenue) -> None:
    ex = nats_venue.client()
    await ex.load_markets()
    order = await ex.create_order(SYMBOL, "market", "sell", 2)
    trades = await ex.fetch_order_trades(order["id"], SYMBOL)
    assert qty_sum(trades) == Decimal(order["info"]["executedQty"]) == Decimal(2)
    with pytest.raises(ccxt.OrderNotFound):
        await ex.fetch_order_trades("999999", SYMBOL)
    await ex.close()
