"""The ccxt gateway: any ccxt exchange by id (`paper` is ours), keys from the environment, and the few
venue operations whose ccxt spelling differs between exchanges.

Actors receive a `VenuePool` from the composition root and never construct exchanges themselves, so
moving from the paper exchange to a live one is configuration: `venue="binance"` in the intent and
`EXECBUS_BINANCE_API_KEY` / `EXECBUS_BINANCE_SECRET` in the environment.
"""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from typing import Any

import ccxt
import ccxt.async_support
import structlog

__all__ = ["VenuePool", "open_exchange", "to_decimal", "fetch_order_by_client_id", "market_rules"]

log = structlog.get_logger("execbus.venues")


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


def open_exchange(venue: str, *, nats_url: str | None = None, options: dict[str, Any] | None = None) -> Any:
    """A ccxt async exchange instance for `venue` (not yet connected; call `load_markets`)."""
    if venue == "paper":
        from venues.paper import PaperExchange  # imported lazily: live deployments never load the simulator

        paper_options = {"natsUrl": nats_url or os.environ.get("NATS_URL")}
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

    def __init__(self, *, nats_url: str | None = None, options: dict[str, dict[str, Any]] | None = None) -> None:
        self._nats_url = nats_url
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
                exchange = open_exchange(venue, nats_url=self._nats_url, options=self._options.get(venue))
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


async def fetch_order_by_client_id(exchange: Any, client_order_id: str, symbol: str) -> dict[str, Any] | None:
    """Find an order by our client order id, or None if the venue does not know it (yet).

    Raises ccxt.NetworkError subclasses as they come: "could not ask" is not "not found".
    """
    if exchange.id == "paper":
        try:
            return await exchange.fetch_order(None, symbol, {"clientOrderId": client_order_id})
        except ccxt.OrderNotFound:
            return None
    if exchange.id in ("binance", "binanceus", "binanceusdm", "binancecoinm"):
        try:
            return await exchange.fetch_order(None, symbol, {"origClientOrderId": client_order_id})
        except ccxt.OrderNotFound:
            return None
    for fetch in (exchange.fetch_open_orders, exchange.fetch_closed_orders):
        try:
            orders = await fetch(symbol)
        except ccxt.NotSupported:
            continue
        for order in orders:
            if order.get("clientOrderId") == client_order_id:
                return order
    return None
