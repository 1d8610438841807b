"""Simulator-side records — orders, fills, accounts, market specs — and their wire form.

The wire form is deliberately Binance-shaped (`orderId`, `origQty`, `executedQty`,
`cummulativeQuoteQty`, `status: NEW|PARTIALLY_FILLED|FILLED|CANCELED|EXPIRED`, trade `qty`,
`commission`, …) with every number an exact decimal string: it is what a ccxt exchange class receives
from its venue and keeps in each unified structure's `info`, so callers can stay exact.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["Account", "Fill", "MarketSpec", "SimOrder", "dec_str", "fill_to_wire", "order_to_wire"]

_D0 = Decimal(0)
_NS_PER_MS = 1_000_000


def dec_str(value: Decimal | None) -> str | None:
    """Exact plain decimal string without exponent or trailing zeros ('61837.63', '100', '0')."""
    if value is None:
        return None
    if not value:
        return "0"
    return format(value.normalize(), "f")


@dataclass(slots=True, frozen=True)
class MarketSpec:
    """Instrument metadata and fees of one market (from configuration or inferred from the data)."""

    symbol: str
    id: str
    base: str
    quote: str
    tick_size: Decimal
    amount_step: Decimal
    min_amount: Decimal
    min_cost: Decimal
    maker_fee: Decimal
    taker_fee: Decimal

    def to_wire(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol, "id": self.id, "base": self.base, "quote": self.quote,
            "tickSize": dec_str(self.tick_size), "stepSize": dec_str(self.amount_step),
            "minQty": dec_str(self.min_amount), "minNotional": dec_str(self.min_cost),
            "maker": dec_str(self.maker_fee), "taker": dec_str(self.taker_fee),
        }


@dataclass(slots=True, eq=False)
class Fill:
    """One of our executions (a 'my trade')."""

    id: str
    order_id: str
    client_order_id: str
    account: str
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    fee: Decimal
    fee_currency: str
    maker: bool
    ts: int


@dataclass(slots=True, eq=False)
class SimOrder:
    """An order in the simulator; mutated in place as it fills."""

    id: str
    client_order_id: str
    account: str
    symbol: str
    side: str  # 'buy' | 'sell'
    type: str  # 'limit' | 'market'
    time_in_force: str  # GTC | IOC | FOK | PO
    price: Decimal | None
    amount: Decimal
    ts: int
    seq: int
    fee_currency: str
    filled: Decimal = _D0
    cost: Decimal = _D0
    fee: Decimal = _D0
    status: str = "open"  # open | closed | canceled
    expired: bool = False  # canceled by the venue (IOC/FOK/market remainder), Binance's EXPIRED
    update_ts: int = 0
    last_trade_ts: int | None = None
    queue_ahead: Decimal = _D0
    """Displayed market quantity ahead of this order at its price (resting orders only)."""
    reserved: Decimal = _D0
    """Still-reserved balance (quote for buys, base for sells)."""
    resting: bool = False
    trades: list[Fill] = field(default_factory=list)
    """Every fill of this order, kept as long as the order is (fetch_order_trades), independent of the
    account's bounded trade history."""

    @property
    def is_buy(self) -> bool:
        return self.side == "buy"

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled

    @property
    def post_only(self) -> bool:
        return self.time_in_force == "PO"


@dataclass(slots=True, eq=False)
class Account:
    """Balances and order history of one account (several clients may share it)."""

    name: str
    total: dict[str, Decimal]
    used: dict[str, Decimal]
    history_limit: int
    orders: dict[str, SimOrder] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    used_client_ids: set[str] = field(default_factory=set)
    open_ids: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    closed_ids: deque[str] = field(default_factory=deque)
    trades: deque[Fill] = field(default_factory=deque)

    def free(self, currency: str) -> Decimal:
        return self.total.get(currency, _D0) - self.used.get(currency, _D0)

    def add(self, currency: str, total: Decimal = _D0, used: Decimal = _D0) -> None:
        if total:
            self.total[currency] = self.total.get(currency, _D0) + total
        if used:
            self.used[currency] = self.used.get(currency, _D0) + used

    def closed(self, order: SimOrder) -> None:
        """Move an order to history, forgetting the oldest beyond `history_limit` (its id stays used)."""
        self.open_ids.pop(order.id, None)
        self.closed_ids.append(order.id)
        while len(self.closed_ids) > self.history_limit:
            old = self.orders.pop(self.closed_ids.popleft(), None)
            # a reused clientOrderId (binance profile) may already name a newer order: keep that one
            if old is not None and self.by_client_id.get(old.client_order_id) == old.id:
                del self.by_client_id[old.client_order_id]

    def record_trade(self, fill: Fill) -> None:
        self.trades.append(fill)
        while len(self.trades) > self.history_limit:
            self.trades.popleft()


_STATUS = {"open": "NEW", "closed": "FILLED", "canceled": "CANCELED"}


def order_to_wire(o: SimOrder) -> dict[str, Any]:
    """Binance-shaped order with exact strings; PaperExchange.parse_order maps it to ccxt's."""
    status = _STATUS[o.status]
    if o.status == "open" and o.filled:
        status = "PARTIALLY_FILLED"
    elif o.status == "canceled" and o.expired:
        status = "EXPIRED"
    otype = "MARKET" if o.type == "market" else ("LIMIT_MAKER" if o.post_only else "LIMIT")
    return {
        "symbol": o.symbol,
        "orderId": o.id,
        "clientOrderId": o.client_order_id,
        "account": o.account,
        "price": dec_str(o.price),
        "origQty": dec_str(o.amount),
        "executedQty": dec_str(o.filled),
        "cummulativeQuoteQty": dec_str(o.cost),
        "avgPrice": dec_str(o.cost / o.filled) if o.filled else None,
        "status": status,
        "timeInForce": o.time_in_force,
        "type": otype,
        "side": o.side.upper(),
        "postOnly": o.post_only,
        "time": o.ts // _NS_PER_MS,
        "updateTime": o.update_ts // _NS_PER_MS,
        "lastTradeTime": None if o.last_trade_ts is None else o.last_trade_ts // _NS_PER_MS,
        "commission": dec_str(o.fee),
        "commissionAsset": o.fee_currency,
        "queueAhead": dec_str(o.queue_ahead) if o.resting else None,
        "fills": [fill_to_wire(f) for f in o.trades],
    }


def fill_to_wire(f: Fill) -> dict[str, Any]:
    return {
        "symbol": f.symbol,
        "id": f.id,
        "orderId": f.order_id,
        "clientOrderId": f.client_order_id,
        "account": f.account,
        "side": f.side.upper(),
        "price": dec_str(f.price),
        "qty": dec_str(f.qty),
        "quoteQty": dec_str(f.price * f.qty),
        "commission": dec_str(f.fee),
        "commissionAsset": f.fee_currency,
        "isMaker": f.maker,
        "time": f.ts // _NS_PER_MS,
    }
