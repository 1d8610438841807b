"""What the venues hand the actors: small frozen structs with Decimal money, converted once from ccxt's
unified dicts (whose numbers are floats) at the gateway, so no actor reads a raw ccxt dict.

Conventions:
- every price, amount, cost and fee is a `Decimal` (or None when the venue did not say), converted with
  `to_decimal`: never a float;
- `price`, `amount`, `filled` are ccxt's unified numbers. Where the venue sends its own decimal strings
  (Binance and the paper venue keep them in `info`: an order's `price` / `origQty` / `executedQty`, a
  trade's `price` / `qty`), they are read here too, as `venue_price`, `venue_amount`, `venue_filled`, and
  `exact_*` is the venue's string when there is one, else ccxt's number. The raw `info` is not kept: no
  actor needs any other venue-specific field;
- times are the venue's milliseconds as ints (None when absent);
- ids and codes are strings (None when absent).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import msgspec

__all__ = [
    "Balance",
    "Fee",
    "Level",
    "OrderBook",
    "VenueOrder",
    "VenueTrade",
    "balance_from_ccxt",
    "book_from_ccxt",
    "order_from_ccxt",
    "orders_from_ccxt",
    "to_decimal",
    "trade_from_ccxt",
    "trades_from_ccxt",
]

Level = tuple[Decimal, Decimal]
"""(price, amount) of one book level."""


def to_decimal(value: Any) -> Decimal | None:
    """ccxt numbers are floats; `repr` gives the shortest string that round-trips, which is the decimal
    the venue sent for any price or amount of up to 15 significant digits."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


class Fee(msgspec.Struct, frozen=True, kw_only=True):
    cost: Decimal | None = None
    currency: str | None = None
    """None when the venue named none (also for an empty name)."""


class VenueTrade(msgspec.Struct, frozen=True, kw_only=True):
    """One of our fills as the venue reports it (ccxt's unified trade)."""

    id: str | None = None
    """The venue's trade id; None for venues that give none (the reconciler derives one from content)."""
    order_id: str | None = None
    symbol: str | None = None
    side: str | None = None
    taker_or_maker: str | None = None
    price: Decimal | None = None
    amount: Decimal | None = None
    cost: Decimal | None = None
    venue_price: Decimal | None = None
    """The venue's own decimal string for the price (`info.price`), when it sent one that parses."""
    venue_amount: Decimal | None = None
    """The venue's own decimal string for the amount (`info.qty`, else `info.amount`)."""
    fee_cost: Decimal | None = None
    fee_currency: str | None = None
    timestamp: int | None = None

    @property
    def exact_price(self) -> Decimal | None:
        return self.venue_price if self.venue_price is not None else self.price

    @property
    def exact_amount(self) -> Decimal | None:
        return self.venue_amount if self.venue_amount is not None else self.amount


class VenueOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One order as the venue reports it (ccxt's unified order)."""

    id: str | None = None
    client_order_id: str | None = None
    symbol: str | None = None
    side: str | None = None
    type: str | None = None
    status: str | None = None
    """ccxt's: open, closed, canceled, expired, rejected (or None)."""
    price: Decimal | None = None
    amount: Decimal | None = None
    filled: Decimal | None = None
    remaining: Decimal | None = None
    cost: Decimal | None = None
    average: Decimal | None = None
    venue_price: Decimal | None = None
    """The venue's own decimal string for the price (`info.price`), when it sent one that parses."""
    venue_amount: Decimal | None = None
    """... for the amount (`info.origQty`)."""
    venue_filled: Decimal | None = None
    """... for the filled amount (`info.executedQty`)."""
    timestamp: int | None = None
    """Creation time, venue ms."""
    last_update_ms: int | None = None
    """ccxt's `lastUpdateTimestamp`."""
    last_trade_ms: int | None = None
    """ccxt's `lastTradeTimestamp`."""
    fee: Fee | None = None
    """ccxt's `fee` (the order's total fee in one currency), None when the venue gave none."""
    fees: tuple[Fee, ...] = ()

    @property
    def exact_price(self) -> Decimal | None:
        return self.venue_price if self.venue_price is not None else self.price

    @property
    def exact_amount(self) -> Decimal | None:
        return self.venue_amount if self.venue_amount is not None else self.amount

    @property
    def exact_filled(self) -> Decimal | None:
        return self.venue_filled if self.venue_filled is not None else self.filled


class OrderBook(msgspec.Struct, frozen=True, kw_only=True):
    """Levels best first."""

    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()
    timestamp: int | None = None
    symbol: str | None = None


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    """Per currency code; a currency the venue gave no number for is absent. Treat the dicts as read-only."""

    total: dict[str, Decimal] = msgspec.field(default_factory=dict)
    free: dict[str, Decimal] = msgspec.field(default_factory=dict)
    used: dict[str, Decimal] = msgspec.field(default_factory=dict)
    timestamp: int | None = None


# -- conversions ------------------------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _code(value: Any) -> str | None:
    """A currency code; an empty one is no code."""
    return str(value) if value else None


def _ms(value: Any) -> int | None:
    """Venue milliseconds as an int (ccxt gives ints; a float or a numeric string is taken as well)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return int(value) if value.is_finite() else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                parsed = Decimal(value)
            except ArithmeticError:
                return None
            return int(parsed) if parsed.is_finite() else None
    return None


def _venue_decimal(info: Any, *keys: str) -> Decimal | None:
    """The venue's own decimal string under the first of `keys` that holds a string (venue-specific:
    Binance's spelling, which the paper venue shares); None when there is none or it does not parse."""
    if not isinstance(info, Mapping):
        return None
    for key in keys:
        raw = info.get(key)
        if isinstance(raw, str):
            try:
                return Decimal(raw)
            except ArithmeticError:
                return None
    return None


def _fee(raw: Any) -> Fee | None:
    if not raw or not isinstance(raw, Mapping):
        return None
    return Fee(cost=to_decimal(raw.get("cost")), currency=_code(raw.get("currency")))


def trade_from_ccxt(trade: Mapping[str, Any]) -> VenueTrade:
    info = trade.get("info")
    fee = _fee(trade.get("fee"))
    return VenueTrade(
        id=_str(trade.get("id")),
        order_id=_str(trade.get("order")),
        symbol=_str(trade.get("symbol")),
        side=_str(trade.get("side")),
        taker_or_maker=_str(trade.get("takerOrMaker")),
        price=to_decimal(trade.get("price")),
        amount=to_decimal(trade.get("amount")),
        cost=to_decimal(trade.get("cost")),
        venue_price=_venue_decimal(info, "price"),
        venue_amount=_venue_decimal(info, "qty", "amount"),
        fee_cost=None if fee is None else fee.cost,
        fee_currency=None if fee is None else fee.currency,
        timestamp=_ms(trade.get("timestamp")),
    )


def order_from_ccxt(order: Mapping[str, Any]) -> VenueOrder:
    info = order.get("info")
    fees = order.get("fees")
    fee_list = tuple(f for f in map(_fee, fees) if f is not None) if isinstance(fees, list | tuple) else ()
    return VenueOrder(
        id=_str(order.get("id")),
        client_order_id=_str(order.get("clientOrderId")),
        symbol=_str(order.get("symbol")),
        side=_str(order.get("side")),
        type=_str(order.get("type")),
        status=_str(order.get("status")),
        price=to_decimal(order.get("price")),
        amount=to_decimal(order.get("amount")),
        filled=to_decimal(order.get("filled")),
        remaining=to_decimal(order.get("remaining")),
        cost=to_decimal(order.get("cost")),
        average=to_decimal(order.get("average")),
        venue_price=_venue_decimal(info, "price"),
        venue_amount=_venue_decimal(info, "origQty"),
        venue_filled=_venue_decimal(info, "executedQty"),
        timestamp=_ms(order.get("timestamp")),
        last_update_ms=_ms(order.get("lastUpdateTimestamp")),
        last_trade_ms=_ms(order.get("lastTradeTimestamp")),
        fee=_fee(order.get("fee")),
        fees=fee_list,
    )


def orders_from_ccxt(orders: Iterable[Mapping[str, Any]]) -> list[VenueOrder]:
    return [order_from_ccxt(o) for o in orders]


def trades_from_ccxt(trades: Iterable[Mapping[str, Any]]) -> list[VenueTrade]:
    return [trade_from_ccxt(t) for t in trades]


def _levels(side: Any, depth: int | None) -> tuple[Level, ...]:
    rows = list(side or [])
    if depth is not None:
        rows = rows[:depth]
    out: list[Level] = []
    for row in rows:
        price_raw, amount_raw, *_ = row  # [price, amount] or [price, amount, count/id]
        price, amount = to_decimal(price_raw), to_decimal(amount_raw)
        if price is None or amount is None:
            raise ValueError(f"order book level without a price or an amount: {row!r}")
        out.append((price, amount))
    return tuple(out)


def book_from_ccxt(book: Mapping[str, Any], depth: int | None = None) -> OrderBook:
    """The book's best `depth` levels per side (all of them without a depth). A level without a price or an
    amount raises ValueError: a book is never priced from a guess."""
    return OrderBook(
        bids=_levels(book.get("bids"), depth),
        asks=_levels(book.get("asks"), depth),
        timestamp=_ms(book.get("timestamp")),
        symbol=_str(book.get("symbol")),
    )


def balance_from_ccxt(balance: Mapping[str, Any]) -> Balance:
    def per_currency(key: str) -> dict[str, Decimal]:
        raw = balance.get(key) or {}
        out: dict[str, Decimal] = {}
        if isinstance(raw, Mapping):
            for currency, value in raw.items():
                amount = to_decimal(value)
                if amount is not None:
                    out[str(currency)] = amount
        return out

    return Balance(
        total=per_currency("total"), free=per_currency("free"), used=per_currency("used"),
        timestamp=_ms(balance.get("timestamp")),
    )
