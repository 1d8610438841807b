"""The typed venue structs: ccxt's dicts converted once, with Decimal money, and the typed gateway helpers,
which convert the venue's answer and let ccxt's exceptions through unchanged."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import ccxt
import msgspec
import pytest

from venues import gateway
from venues.paper import PaperExchange
from venues.types import (
    Balance,
    Fee,
    OrderBook,
    VenueOrder,
    VenueTrade,
    balance_from_ccxt,
    book_from_ccxt,
    order_from_ccxt,
    to_decimal,
    trade_from_ccxt,
)

from paper_helpers import SYMBOL

D = Decimal


def _money_fields(obj: msgspec.Struct) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__struct_fields__}


def _no_floats(value: Any) -> None:
    """Nothing in a converted struct is a float, however deep."""
    if isinstance(value, msgspec.Struct):
        for v in _money_fields(value).values():
            _no_floats(v)
    elif isinstance(value, dict):
        for v in value.values():
            _no_floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _no_floats(v)
    else:
        assert not isinstance(value, float), value


# -- to_decimal -------------------------------------------------------------------------------------------


def test_to_decimal_keeps_what_ccxt_gave_never_a_binary_float() -> None:
    assert to_decimal(0.1 + 0.2) == D("0.30000000000000004")  # what ccxt's float says, not a rounding
    assert to_decimal(0.1) == D("0.1") and to_decimal(100.01) == D("100.01")
    assert to_decimal("0.00100000") == D("0.001") and to_decimal(5) == D(5)
    assert to_decimal(None) is None
    d = D("1.5")
    assert to_decimal(d) is d
    with pytest.raises(ArithmeticError):
        to_decimal("not a number")  # never read as 0


# -- orders -----------------------------------------------------------------------------------------------


def _ccxt_order(**over: Any) -> dict[str, Any]:
    order = {
        "id": "123", "clientOrderId": "i-1-1", "symbol": "BTC/USDT", "side": "buy", "type": "limit",
        "status": "open", "price": 100.01, "amount": 0.3, "filled": 0.1 + 0.2, "remaining": 0.0,
        "cost": 30.003, "average": 100.01, "timestamp": 1_700_000_000_000,
        "lastUpdateTimestamp": 1_700_000_000_050, "lastTradeTimestamp": 1_700_000_000_040,
        "fee": {"cost": 0.0003, "currency": "BTC"}, "fees": [{"cost": 0.0003, "currency": "BTC"}],
        "info": {"price": "100.01000000", "origQty": "0.30000000", "executedQty": "0.30000000"},
    }
    order.update(over)
    return order


def test_an_order_converts_every_number_to_decimal_and_keeps_the_venues_strings_apart() -> None:
    order = order_from_ccxt(_ccxt_order())
    assert isinstance(order, VenueOrder)
    _no_floats(order)
    assert (order.id, order.client_order_id, order.symbol, order.side, order.type, order.status) == (
        "123", "i-1-1", "BTC/USDT", "buy", "limit", "open")
    assert order.price == D("100.01") and order.amount == D("0.3")
    assert str(order.filled) == "0.30000000000000004"  # ccxt's float, as it was
    assert order.venue_filled == D("0.3") and order.exact_filled == D("0.3")  # the venue's own string wins
    assert order.exact_price == D("100.01") and order.exact_amount == D("0.3")
    assert order.remaining == 0 and order.cost == D("30.003") and order.average == D("100.01")
    assert (order.timestamp, order.last_update_ms, order.last_trade_ms) == (
        1_700_000_000_000, 1_700_000_000_050, 1_700_000_000_040)
    assert order.fee == Fee(cost=D("0.0003"), currency="BTC") and order.fees == (order.fee,)


def test_an_order_with_fields_missing_or_none_converts_to_none_not_zero() -> None:
    bare = order_from_ccxt({"id": 7})
    assert bare == VenueOrder(id="7")  # an int id becomes the string ccxt would have given
    assert bare.filled is None and bare.exact_filled is None and bare.fee is None and bare.fees == ()
    nones = order_from_ccxt({k: None for k in _ccxt_order()})
    assert nones == VenueOrder()
    # an empty fee, or one without a currency, is no fee / no currency
    assert order_from_ccxt(_ccxt_order(fee={})).fee is None
    assert order_from_ccxt(_ccxt_order(fee={"cost": None, "currency": ""})).fee == Fee()
    assert order_from_ccxt(_ccxt_order(fees=None)).fees == ()


def test_an_order_given_strings_and_odd_venue_strings() -> None:
    order = order_from_ccxt(_ccxt_order(price="100.5", amount="2", filled="0", timestamp="1700000000000",
                                        info={"price": "not a number", "origQty": 2, "executedQty": " 0.5 "}))
    assert order.price == D("100.5") and order.amount == D(2) and order.filled == 0
    assert order.timestamp == 1_700_000_000_000
    assert order.venue_price is None and order.exact_price == D("100.5")  # unparsable venue string: ccxt's
    assert order.venue_amount is None and order.exact_amount == D(2)  # not a string: ccxt's
    assert order.venue_filled == D("0.5")
    assert order_from_ccxt(_ccxt_order(info="raw text")).venue_price is None
    # float timestamps are whole ms; booleans are no time
    assert order_from_ccxt(_ccxt_order(timestamp=1.7e12, lastUpdateTimestamp=True)).timestamp == 1_700_000_000_000
    assert order_from_ccxt(_ccxt_order(lastUpdateTimestamp=True)).last_update_ms is None


def test_an_unparsable_number_raises_rather_than_reading_as_nothing() -> None:
    with pytest.raises(ArithmeticError):
        order_from_ccxt(_ccxt_order(filled="lots"))


def test_structs_are_frozen_and_round_trip_through_msgspec() -> None:
    order = order_from_ccxt(_ccxt_order())
    with pytest.raises(AttributeError):
        order.status = "closed"  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(order), type=VenueOrder) == order  # Decimals as strings


# -- trades -----------------------------------------------------------------------------------------------


def test_a_trade_converts_with_its_fee_and_the_venues_exact_strings() -> None:
    trade = trade_from_ccxt({
        "id": 55, "order": 123, "symbol": "BTC/USDT", "side": "sell", "takerOrMaker": "maker",
        "price": 0.1 + 0.2, "amount": 0.1, "cost": 0.030000000000000006, "timestamp": 1_700_000_000_010,
        "fee": {"cost": 0.1 + 0.2, "currency": "USDT"}, "info": {"price": "0.3", "qty": "0.1"},
    })
    _no_floats(trade)
    assert (trade.id, trade.order_id, trade.taker_or_maker, trade.timestamp) == ("55", "123", "maker", 1_700_000_000_010)
    assert trade.price == D("0.30000000000000004") and trade.exact_price == D("0.3")
    assert trade.amount == D("0.1") and trade.exact_amount == D("0.1")
    assert trade.fee_cost == D("0.30000000000000004") and trade.fee_currency == "USDT"


def test_a_trade_without_id_fee_or_info() -> None:
    trade = trade_from_ccxt({"id": None, "order": "9", "price": 100.0, "amount": 1.0, "fee": None})
    assert trade.id is None and trade.fee_cost is None and trade.fee_currency is None
    assert trade.exact_price == D("100.0") and trade.exact_amount == D("1.0")
    assert trade_from_ccxt({}) == VenueTrade()
    # the amount's venue string: `qty`, else `amount`; an unparsable first string falls back to ccxt's
    assert trade_from_ccxt({"amount": 1.0, "info": {"amount": "0.75"}}).exact_amount == D("0.75")
    assert trade_from_ccxt({"amount": 1.0, "info": {"qty": "x", "amount": "0.75"}}).exact_amount == D("1.0")
    assert trade_from_ccxt({"fee": {"cost": "0.5", "currency": None}}).fee_cost == D("0.5")


# -- books and balances -----------------------------------------------------------------------------------


def test_a_book_becomes_decimal_levels_best_first_cut_to_depth() -> None:
    raw = {"symbol": "BTC/USDT", "timestamp": 1_700_000_000_000,
           "bids": [[100.02, 0.1 + 0.2], [100.01, 1.0, 3], [100.0, 2.0]],
           "asks": [["100.03", "0.5"], [100.04, 1]]}
    book = book_from_ccxt(raw)
    _no_floats(book)
    assert book.bids == ((D("100.02"), D("0.30000000000000004")), (D("100.01"), D("1.0")), (D("100.0"), D("2.0")))
    assert book.asks == ((D("100.03"), D("0.5")), (D("100.04"), D(1)))
    assert book.timestamp == 1_700_000_000_000 and book.symbol == "BTC/USDT"
    assert book_from_ccxt(raw, 1).bids == ((D("100.02"), D("0.30000000000000004")),)
    assert book_from_ccxt({"bids": None}) == OrderBook()


def test_a_book_level_without_a_price_is_refused() -> None:
    with pytest.raises(ValueError):
        book_from_ccxt({"bids": [[None, 1.0]], "asks": []})
    with pytest.raises(ValueError):
        book_from_ccxt({"bids": [[100.0]], "asks": []})


def test_a_balance_per_currency_leaves_out_what_the_venue_gave_no_number_for() -> None:
    balance = balance_from_ccxt({
        "info": {}, "timestamp": 5, "BTC": {"free": 0.1, "used": 0.2, "total": 0.1 + 0.2},
        "total": {"BTC": 0.1 + 0.2, "USDT": 1000, "ETH": None}, "free": {"BTC": 0.1, "USDT": "990.5"},
        "used": {"BTC": 0.2},
    })
    _no_floats(balance)
    assert balance.total == {"BTC": D("0.30000000000000004"), "USDT": D(1000)}
    assert balance.free == {"BTC": D("0.1"), "USDT": D("990.5")} and balance.used == {"BTC": D("0.2")}
    assert balance.timestamp == 5
    assert balance_from_ccxt({}) == Balance() and balance_from_ccxt({"total": None}).total == {}


# -- the paper venue's real answers -----------------------------------------------------------------------


async def test_the_paper_venues_answers_convert_exactly(exchange: PaperExchange) -> None:
    book = await gateway.fetch_order_book(exchange, SYMBOL, 5)
    raw_book = await exchange.fetch_order_book(SYMBOL, 5)
    assert isinstance(book, OrderBook) and 0 < len(book.bids) <= 5 and 0 < len(book.asks) <= 5
    assert book.bids[0][0] == Decimal(str(raw_book["bids"][0][0])) and book.bids[0][0] < book.asks[0][0]
    _no_floats(book)

    balance = await gateway.fetch_balance(exchange)
    raw_balance = await exchange.fetch_balance()
    assert balance.total and all(balance.total[c] == to_decimal(v) for c, v in raw_balance["total"].items() if v is not None)

    bid, ask = book.bids[0][0], book.asks[0][0]
    resting = await gateway.create_order(exchange, SYMBOL, "limit", "buy", "0.01", str(bid - 500), {"clientOrderId": "t-1"})
    assert resting.status == "open" and resting.client_order_id == "t-1" and resting.exact_amount == D("0.01")
    assert resting.exact_price == bid - 500 and resting.filled == 0
    assert [o.id for o in await gateway.fetch_open_orders(exchange, SYMBOL)] == [resting.id]
    assert await gateway.fetch_order(exchange, resting.id, SYMBOL) == await gateway.fetch_order_by_client_id(exchange, "t-1", SYMBOL)
    assert await gateway.fetch_order_by_client_id(exchange, "never-sent", SYMBOL) is None
    assert await gateway.cancel_order(exchange, resting.id, SYMBOL) is None
    assert (await gateway.fetch_order(exchange, resting.id, SYMBOL)).status == "canceled"

    taken = await gateway.create_order(exchange, SYMBOL, "market", "buy", "0.123", None, {"clientOrderId": "t-2"})
    _no_floats(taken)
    assert taken.status == "closed" and taken.exact_filled == D("0.123")
    trades = await gateway.fetch_order_trades(exchange, taken.id, SYMBOL)
    assert trades and all(isinstance(t, VenueTrade) and t.order_id == taken.id for t in trades)
    assert sum(t.exact_amount for t in trades) == D("0.123")  # exact: the venue's strings, no float sum
    assert all(t.exact_price >= ask for t in trades) and all(t.taker_or_maker == "taker" for t in trades)
    assert taken.fee is not None and taken.fee.cost == sum(t.fee_cost for t in trades)  # type: ignore[misc]
    mine = await gateway.fetch_my_trades(exchange, SYMBOL, None, 100)
    assert {t.id for t in trades} <= {t.id for t in mine}
    _no_floats(mine)


# -- errors pass through unchanged ------------------------------------------------------------------------


class _Failing:
    """ccxt-shaped: every call raises the error it was given."""

    id = "somevenue"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        async def call(*_: Any, **__: Any) -> Any:
            raise self.error

        return call


@pytest.mark.parametrize("error", [
    ccxt.NetworkError("down"), ccxt.RequestTimeout("slow"), ccxt.InvalidOrder("no"), ccxt.OrderNotFound("where"),
    ccxt.RateLimitExceeded("retry_after_ms=120"), ccxt.DuplicateOrderId("again"), ccxt.InsufficientFunds("poor"),
])
async def test_ccxt_errors_propagate_unchanged_from_every_helper(error: Exception) -> None:
    venue = _Failing(error)
    calls = [
        gateway.fetch_order(venue, "1", SYMBOL), gateway.fetch_open_orders(venue, SYMBOL),
        gateway.fetch_order_trades(venue, "1", SYMBOL), gateway.fetch_my_trades(venue, SYMBOL, 0, 10),
        gateway.fetch_order_book(venue, SYMBOL, 5), gateway.fetch_balance(venue),
        gateway.create_order(venue, SYMBOL, "limit", "buy", "1", "100", {}), gateway.cancel_order(venue, "1", SYMBOL),
        gateway.watch_orders(venue), gateway.watch_my_trades(venue), gateway.watch_order_book(venue, SYMBOL),
    ]
    for call in calls:
        with pytest.raises(type(error)) as raised:
            await call
        assert raised.value is error
    if not isinstance(error, ccxt.OrderNotFound):  # "not found" is the one answer a lookup turns into None
        with pytest.raises(type(error)):
            await gateway.fetch_order_by_client_id(venue, "i-1-1", SYMBOL)


async def test_the_lookup_by_client_id_on_a_venue_that_lists_orders() -> None:
    class Listing:
        id = "somevenue"

        async def fetch_open_orders(self, symbol: str) -> list[dict[str, Any]]:
            return [{"id": "1", "clientOrderId": "other", "filled": "garbage"}]  # not ours: never read

        async def fetch_closed_orders(self, symbol: str) -> list[dict[str, Any]]:
            return [{"id": "2", "clientOrderId": "i-1-1", "status": "closed", "filled": 0.5, "amount": 0.5}]

    found = await gateway.fetch_order_by_client_id(Listing(), "i-1-1", SYMBOL)
    assert found == VenueOrder(id="2", client_order_id="i-1-1", status="closed", filled=D("0.5"), amount=D("0.5"))
    assert await gateway.fetch_order_by_client_id(Listing(), "absent", SYMBOL) is None
