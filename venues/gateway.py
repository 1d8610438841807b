"""The ccxt gateway: any ccxt exchange by id (`paper` is ours), keys from the environment, and the few
venue operations whose ccxt spelling differs between exchanges.

Actors receive a `VenuePool` from the composition root and never construct exchanges themselves, so
moving from the paper exchange to a live one is configuration: `venue="binance"` in the intent and
`EXECBUS_BINANCE_API_KEY` / `EXECBUS_BINANCE_SECRET` in the environment.

Actors call the venue through the typed helpers at the end of this module (`fetch_order`,
`fetch_order_book`, `create_order`, ...), which return the structs of `venues.types` (Decimal money) rather
than ccxt's dicts. They convert the venue's answer and nothing else: ccxt's exceptions (NetworkError,
RequestTimeout, InvalidOrder, OrderNotFound, RateLimitExceeded, ...) propagate unchanged, since the actors'
error handling depends on their classes.
"""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from typing import Any

import ccxt
import ccxt.async_support
import structlog

from venues.types import (
    Balance,
    OrderBook,
    VenueOrder,
    VenueTrade,
    balance_from_ccxt,
    book_from_ccxt,
    order_from_ccxt,
    orders_from_ccxt,
    to_decimal,
    trades_from_ccxt,
)

__all__ = [
    "VenuePool", "open_exchange", "to_decimal", "market_rules",
    "fetch_order_by_client_id", "fetch_order", "fetch_open_orders", "fetch_order_trades", "fetch_my_trades",
    "fetch_order_book", "fetch_balance", "create_order", "cancel_order", "watch_orders", "watch_my_trades",
    "watch_order_book",
]

log = structlog.get_logger("execbus.venues")


def open_exchange(
    venue: str, *, nats_url: str | None = None, options: dict[str, Any] | None = None, nats_auth: Any = None
) -> Any:
    """A ccxt async exchange instance for `venue` (not yet connected; call `load_markets`). `nats_auth` (a
    `bus.connect.ClientAuth`) is who the paper exchange's client is on the bus; None: from the environment."""
    if venue == "paper":
        from venues.paper import PaperExchange  # imported lazily: live deployments never load the simulator

        paper_options = {"natsUrl": nats_url or os.environ.get("NATS_URL"), "natsAuth": nats_auth}
        paper_options.update(options or {})
        return PaperExchange({"options": paper_options})
    module: Any = None
    try:
        import ccxt.pro as module  # watch_* support where the exchange has it
    except ImportError:  # pragma: no cover - ccxt always ships pro nowadays
        module = ccxt.async_support
    exchange_class = getattr(module, venue, None) or getattr(ccxt.async_support, venue, None)
    if exchange_class is None:
        raise ValueError(f"unknown venue {venue!r}: not a ccxt exchange id")
    prefix = f"EXECBUS_{venue.upper()}_"
    config: dict[str, Any] = {"enableRateLimit": True}
    for key, env in (("apiKey", "API_KEY"), ("secret", "SECRET"), ("password", "PASSWORD")):
        if os.environ.get(prefix + env):
            config[key] = os.environ[prefix + env]
    if os.environ.get(prefix + "SANDBOX") == "1":
        config["sandbox"] = True
    config.update(options or {})
    return exchange_class(config)


class VenuePool:
    """One connected exchange per venue id, shared by an actor's handlers; markets loaded once."""

    def __init__(
        self, *, nats_url: str | None = None, options: dict[str, dict[str, Any]] | None = None, nats_auth: Any = None
    ) -> None:
        self._nats_url = nats_url
        self._nats_auth = nats_auth
        self._options = options or {}
        self._exchanges: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def opened(self) -> list[Any]:
        """The exchanges opened so far."""
        return list(self._exchanges.values())

    def known(self, venue: str) -> bool:
        return venue == "paper" or venue in ccxt.exchanges

    async def get(self, venue: str) -> Any:
        exchange = self._exchanges.get(venue)
        if exchange is not None:
            return exchange
        lock = self._locks.setdefault(venue, asyncio.Lock())
        async with lock:
            if venue not in self._exchanges:
                exchange = open_exchange(
                    venue, nats_url=self._nats_url, options=self._options.get(venue), nats_auth=self._nats_auth
                )
                try:
                    await exchange.load_markets()
                except Exception:
                    await exchange.close()
                    raise
                self._exchanges[venue] = exchange
                log.info("venue_opened", venue=venue, markets=len(exchange.markets or {}))
        return self._exchanges[venue]

    async def close(self) -> None:
        for venue, exchange in list(self._exchanges.items()):
            try:
                await exchange.close()
            except Exception as exc:  # closing is best effort
                log.debug("venue_close_failed", venue=venue, error=repr(exc))
        self._exchanges.clear()


def market_rules(exchange: Any, symbol: str) -> dict[str, Decimal | None]:
    """Tick size, amount step and minimums of one market, as Decimals (ccxt TICK_SIZE precision mode,
    which the paper exchange and most modern ccxt exchanges use)."""
    market = exchange.market(symbol)
    precision = market.get("precision") or {}
    limits = market.get("limits") or {}
    tick_mode = getattr(exchange, "precisionMode", ccxt.TICK_SIZE) == ccxt.TICK_SIZE

    def step(value: Any) -> Decimal | None:
        if value is None:
            return None
        return to_decimal(value) if tick_mode else Decimal(1).scaleb(-int(value))

    return {
        "tick_size": step(precision.get("price")),
        "amount_step": step(precision.get("amount")),
        "min_amount": to_decimal((limits.get("amount") or {}).get("min")),
        "max_amount": to_decimal((limits.get("amount") or {}).get("max")),
        "min_cost": to_decimal((limits.get("cost") or {}).get("min")),
    }


async def fetch_order_by_client_id(exchange: Any, client_order_id: str, symbol: str) -> VenueOrder | None:
    """Find an order by our client order id, or None if the venue does not know it (yet).

    Raises ccxt.NetworkError subclasses as they come: "could not ask" is not "not found".
    """
    if exchange.id == "paper":
        try:
            return order_from_ccxt(await exchange.fetch_order(None, symbol, {"clientOrderId": client_order_id}))
        except ccxt.OrderNotFound:
            return None
    if exchange.id in ("binance", "binanceus", "binanceusdm", "binancecoinm"):
        try:
            return order_from_ccxt(await exchange.fetch_order(None, symbol, {"origClientOrderId": client_order_id}))
        except ccxt.OrderNotFound:
            return None
    for fetch in (exchange.fetch_open_orders, exchange.fetch_closed_orders):
        try:
            orders = await fetch(symbol)
        except ccxt.NotSupported:
            continue
        for order in orders:
            if order.get("clientOrderId") == client_order_id:
                return order_from_ccxt(order)  # (only the match is converted: the others are not ours to read)
    return None


# -- typed venue calls: ccxt's answer as `venues.types` structs; ccxt's exceptions pass through unchanged --


async def fetch_order(exchange: Any, order_id: str, symbol: str) -> VenueOrder:
    return order_from_ccxt(await exchange.fetch_order(order_id, symbol))


async def fetch_open_orders(exchange: Any, symbol: str | None = None) -> list[VenueOrder]:
    """The account's open orders of `symbol` (of every symbol without one)."""
    if symbol is None:
        return orders_from_ccxt(await exchange.fetch_open_orders())
    return orders_from_ccxt(await exchange.fetch_open_orders(symbol))


async def fetch_order_trades(exchange: Any, order_id: str, symbol: str) -> list[VenueTrade]:
    return trades_from_ccxt(await exchange.fetch_order_trades(order_id, symbol))


async def fetch_my_trades(
    exchange: Any, symbol: str, since: int | None = None, limit: int | None = None
) -> list[VenueTrade]:
    """One page of the account's trades, as the venue answers it (oldest first on ccxt venues)."""
    return trades_from_ccxt(await exchange.fetch_my_trades(symbol, since, limit))


async def fetch_order_book(exchange: Any, symbol: str, depth: int | None = None) -> OrderBook:
    """The book, asked for `depth` levels and cut to them (a venue may answer more than asked)."""
    return book_from_ccxt(await exchange.fetch_order_book(symbol, depth), depth)


async def fetch_balance(exchange: Any) -> Balance:
    return balance_from_ccxt(await exchange.fetch_balance())


async def create_order(
    exchange: Any, symbol: str, type: str, side: str, amount: Any, price: Any, params: dict[str, Any]
) -> VenueOrder:
    """`amount` and `price` go to ccxt exactly as given (the placer passes strings at the venue's precision)."""
    return order_from_ccxt(await exchange.create_order(symbol, type, side, amount, price, params))


async def cancel_order(exchange: Any, order_id: str, symbol: str) -> None:
    """Ask the venue to cancel. What venues answer to a cancel differs too much (many answer little more
    than the id) to be read: the order's end is learned from `fetch_order` and the order stream."""
    await exchange.cancel_order(order_id, symbol)


async def watch_orders(exchange: Any, symbol: str | None = None) -> list[VenueOrder]:
    """The next batch of the account's order updates (of `symbol`, or of every symbol without one)."""
    if symbol is None:
        return orders_from_ccxt(await exchange.watch_orders())
    return orders_from_ccxt(await exchange.watch_orders(symbol))


async def watch_my_trades(exchange: Any) -> list[VenueTrade]:
    """The next batch of the account's trades, every symbol."""
    return trades_from_ccxt(await exchange.watch_my_trades())


async def watch_order_book(exchange: Any, symbol: str, depth: int | None = None) -> OrderBook:
    """The next book of the stream (the venue's default depth), cut to `depth` levels."""
    return book_from_ccxt(await exchange.watch_order_book(symbol), depth)
