"""`PaperExchange`: a real ccxt async exchange whose venue is the execbus paper simulator.

Constructed like any ccxt exchange, so scripts written for ccxt run unchanged:

    PaperExchange({'options': {'natsUrl': 'nats://127.0.0.1:4222'}})   # default: $NATS_URL
    PaperExchange({'options': {'engine': PaperVenue(config)}})        # in-process, for unit tests

Options: `natsUrl`, `engine` (a `venues.simulator.PaperVenue`), `venue` (subject namespace, default
'paper'), `account` (default: `apiKey` if set, else 'main' — clients sharing an account share orders
and balances). The venue speaks a Binance-shaped JSON with exact decimal strings; this class parses it
into ccxt's unified structures (floats, as ccxt does) and keeps the exact strings in `info`.
Like ccxt's own exchange classes, `create_order` rounds amount and price with `amount_to_precision`
/ `price_to_precision` before sending. `load_markets` also reads the venue's `features` (its profile and
quirks, see venues/README.md) into `has['fetchOrderTrades']` and `options['createMarketBuyOrderRequiresPrice']`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ccxt
from ccxt.async_support.base.exchange import Exchange
from ccxt.base.decimal_to_precision import TICK_SIZE

from venues.subjects import Subjects, check_token
from venues.transport import InProcessTransport, NatsTransport, Transport

__all__ = ["PaperExchange"]

_STATUS = {"NEW": "open", "PARTIALLY_FILLED": "open", "FILLED": "closed", "CANCELED": "canceled",
           "EXPIRED": "canceled", "REJECTED": "rejected"}
_SUPPORTED = ("fetchMarkets", "fetchOrderBook", "fetchTicker", "fetchBalance", "createOrder",
              "createMarketOrder", "createLimitOrder", "createPostOnlyOrder", "cancelOrder", "fetchOrder",
              "fetchOpenOrders", "fetchClosedOrders", "fetchMyTrades", "fetchOrderTrades", "fetchTime",
              "watchOrders", "watchMyTrades", "watchOrderBook", "ws", "spot", "publicAPI", "privateAPI")


class _Stream:
    """Events of one subscription, buffered until the next watch_* call takes them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.event = asyncio.Event()
        self.handle: Any = None

    def push(self, _subject: str, payload: dict[str, Any]) -> None:
        self.items.append(payload)
        self.event.set()

    async def take(self) -> list[dict[str, Any]]:
        while not self.items:
            self.event.clear()
            await self.event.wait()
        items, self.items = self.items, []
        self.event.clear()
        return items


class PaperExchange(Exchange):
    """ccxt exchange `paper`: spot markets replayed from recorded (or synthetic) data."""

    def describe(self) -> Any:
        has: dict[str, Any] = {k: False for k in self.deep_extend(super().describe()["has"])}
        has.update({k: True for k in _SUPPORTED})
        has["CORS"] = None
        return self.deep_extend(super().describe(), {
            "id": "paper",
            "name": "execbus paper exchange",
            "countries": [],
            "version": "v1",
            "rateLimit": 0,
            "certified": False,
            "pro": True,
            "has": has,
            "precisionMode": TICK_SIZE,
            "requiredCredentials": {"apiKey": False, "secret": False},
            "options": {"natsUrl": None, "engine": None, "venue": "paper", "account": None,
                        "createMarketBuyOrderRequiresPrice": False},
        })

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config or {})
        self._transport: Transport | None = None
        self._streams: dict[str, _Stream] = {}
        self._books: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------- transport
    @property
    def account_name(self) -> str:
        return check_token(self.options.get("account") or self.apiKey or "main", "account")

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.options.get("venue") or "paper")

    def _tx(self) -> Transport:
        if self._transport is None:
            engine = self.options.get("engine")
            if engine is not None:
                self._transport = InProcessTransport(engine)
            else:
                url = self.options.get("natsUrl") or os.environ.get("NATS_URL") or "nats://127.0.0.1:4222"
                self._transport = NatsTransport(
                    url, self.subjects, max(self.timeout, 1) / 1000, auth=self.options.get("natsAuth")
                )
        return self._transport

    async def _rpc(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        body = {"account": self.account_name}
        body.update({k: v for k, v in (payload or {}).items() if v is not None})
        return await self._tx().call("rpc", method, body)

    async def paper_control(self, command: str, payload: dict[str, Any] | None = None) -> Any:
        """The venue's control API (advance, advance_until, advance_to, faults_set, faults_clear, stats,
        set_balances, ping, quirks, profile, audit). `quirks` and `profile` also refresh this client's
        `has` / `options`; other clients pick the change up on their next `load_markets(reload=True)`."""
        body = {"account": self.account_name}
        body.update(payload or {})
        result = await self._tx().call("ctl", command, body)
        if command in ("quirks", "profile"):
            self._apply_features(result)
        return result

    def _apply_features(self, features: dict[str, Any]) -> None:
        """Advertise what the venue's quirks make true (has['fetchOrderTrades'], market-buy option)."""
        self.has = dict(self.has)
        self.has.update(features.get("has", {}))
        self.options.update(features.get("options", {}))

    async def close(self, clean_instance_data: bool = False) -> None:  # no aiohttp session to close
        self.closed_by_user = True
        for stream in self._streams.values():
            if stream.handle is not None and self._transport is not None:
                await self._transport.unsubscribe(stream.handle)
        self._streams.clear()
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    # ----------------------------------------------------------------- public
    async def fetch_markets(self, params: dict[str, Any] = {}) -> list[Any]:
        self._apply_features(await self._rpc("features"))
        return [self.parse_market(m) for m in await self._rpc("markets")]

    def parse_market(self, m: dict[str, Any]) -> Any:
        tick, step = m["tickSize"], m["stepSize"]
        return self.safe_market_structure({
            "id": m["id"], "symbol": m["symbol"], "base": m["base"], "quote": m["quote"],
            "baseId": m["base"], "quoteId": m["quote"], "settle": None, "settleId": None,
            "type": "spot", "spot": True, "margin": False, "swap": False, "future": False, "option": False,
            "active": True, "contract": False, "linear": None, "inverse": None, "contractSize": None,
            "expiry": None, "expiryDatetime": None, "strike": None, "optionType": None,
            "taker": self.parse_number(m["taker"]), "maker": self.parse_number(m["maker"]),
            "precision": {"amount": self.parse_number(step), "price": self.parse_number(tick)},
            "limits": {
                "leverage": {"min": None, "max": None},
                "amount": {"min": self.parse_number(m["minQty"]), "max": None},
                "price": {"min": self.parse_number(tick), "max": None},
                "cost": {"min": self.parse_number(m["minNotional"]), "max": None},
            },
            "marginModes": {"cross": False, "isolated": False},
            "created": None,
            "info": m,
        })

    async def fetch_time(self, params: dict[str, Any] = {}) -> int:
        return await self._rpc("time")

    async def fetch_order_book(self, symbol: str, limit: int | None = None, params: dict[str, Any] = {}) -> Any:
        await self.load_markets()
        market = self.market(symbol)
        return self._parse_book(await self._rpc("order_book", {"symbol": market["symbol"], "limit": limit}))

    def _parse_book(self, w: dict[str, Any], limit: int | None = None) -> Any:
        book = self.parse_order_book(w, w["symbol"], w["time"])
        book["nonce"] = w.get("lastUpdateId")
        if limit is not None:
            book["bids"], book["asks"] = book["bids"][:limit], book["asks"][:limit]
        return book

    async def fetch_ticker(self, symbol: str, params: dict[str, Any] = {}) -> Any:
        await self.load_markets()
        market = self.market(symbol)
        return self.parse_ticker(await self._rpc("ticker", {"symbol": market["symbol"]}), market)

    def parse_ticker(self, w: dict[str, Any], market: Any = None) -> Any:
        return self.safe_ticker({
            "symbol": w["symbol"], "timestamp": w["time"], "datetime": self.iso8601(w["time"]),
            "high": w.get("highPrice"), "low": w.get("lowPrice"), "bid": w.get("bidPrice"),
            "bidVolume": w.get("bidQty"), "ask": w.get("askPrice"), "askVolume": w.get("askQty"),
            "vwap": w.get("weightedAvgPrice"), "open": w.get("openPrice"), "close": w.get("lastPrice"),
            "last": w.get("lastPrice"), "previousClose": None, "change": None, "percentage": None,
            "average": None, "baseVolume": w.get("volume"), "quoteVolume": w.get("quoteVolume"), "info": w,
        }, market)

    # ----------------------------------------------------------------- private
    async def fetch_balance(self, params: dict[str, Any] = {}) -> Any:
        w = await self._rpc("balance")
        result: dict[str, Any] = {"info": w, "timestamp": w["time"], "datetime": self.iso8601(w["time"])}
        for row in w["balances"]:
            account = self.account()
            account["free"] = row["free"]
            account["used"] = row["locked"]
            result[self.safe_currency_code(row["asset"])] = account
        return self.safe_balance(result)

    async def create_order(self, symbol: str, type: str, side: str, amount: float, price: float | None = None,
                           params: dict[str, Any] = {}) -> Any:
        await self.load_markets()
        market = self.market(symbol)
        client_id = self.safe_string_2(params, "clientOrderId", "newClientOrderId")
        tif = self.safe_string_upper(params, "timeInForce")
        post_only = self.is_post_only(type == "market", tif == "PO", params)
        cost = self.safe_string(params, "cost")
        request = {
            "symbol": market["symbol"], "type": type, "side": side,
            "amount": self.amount_to_precision(symbol, amount),
            # market orders carry their price too: a venue with createMarketBuyOrderRequiresPrice needs it
            "price": self.price_to_precision(symbol, price) if price is not None else None,
            "cost": None if cost is None else self.cost_to_precision(symbol, cost),
            "clientOrderId": client_id, "timeInForce": tif, "postOnly": post_only or None,
        }
        return self.parse_order(await self._rpc("create_order", request), market)

    def _order_request(self, id: str | None, symbol: str | None, params: dict[str, Any]) -> dict[str, Any]:
        client_id = self.safe_string_2(params, "clientOrderId", "origClientOrderId")
        if id is None and client_id is None:
            raise ccxt.ArgumentsRequired(f"{self.id} needs an order id or params['clientOrderId']")
        return {"id": None if id is None else str(id), "clientOrderId": client_id,
                "symbol": self.market(symbol)["symbol"] if symbol else None}

    async def cancel_order(self, id: str, symbol: str | None = None, params: dict[str, Any] = {}) -> Any:
        await self.load_markets()
        return self.parse_order(await self._rpc("cancel_order", self._order_request(id, symbol, params)))

    async def fetch_order(self, id: str, symbol: str | None = None, params: dict[str, Any] = {}) -> Any:
        await self.load_markets()
        return self.parse_order(await self._rpc("fetch_order", self._order_request(id, symbol, params)))

    async def _fetch_orders(self, method: str, symbol: str | None, since: int | None, limit: int | None) -> Any:
        await self.load_markets()
        market = self.market(symbol) if symbol else None
        rows = await self._rpc(method, {"symbol": market["symbol"] if market else None})
        return self.parse_orders(rows, market, since, limit)

    async def fetch_open_orders(self, symbol: str | None = None, since: int | None = None,
                                limit: int | None = None, params: dict[str, Any] = {}) -> Any:
        return await self._fetch_orders("open_orders", symbol, since, limit)

    async def fetch_closed_orders(self, symbol: str | None = None, since: int | None = None,
                                  limit: int | None = None, params: dict[str, Any] = {}) -> Any:
        return await self._fetch_orders("closed_orders", symbol, since, limit)

    async def fetch_my_trades(self, symbol: str | None = None, since: int | None = None,
                              limit: int | None = None, params: dict[str, Any] = {}) -> Any:
        await self.load_markets()
        market = self.market(symbol) if symbol else None
        # since/limit go to the venue: without fetchOrderTrades it answers one bounded page, like Binance
        rows = await self._rpc("my_trades", {"symbol": market["symbol"] if market else None,
                                             "since": since, "limit": limit})
        return self.parse_trades(rows, market, since, limit)

    async def fetch_order_trades(self, id: str, symbol: str | None = None, since: int | None = None,
                                 limit: int | None = None, params: dict[str, Any] = {}) -> Any:
        """Trades of one order (by id, or `params['clientOrderId']`), oldest first.

        Served from the order record, so they are complete for as long as the order itself is known —
        even after newer fills pushed them out of the account's bounded `fetch_my_trades` history. Once the
        order has aged out of the closed-order history it raises OrderNotFound, as `fetch_order` does.
        """
        await self.load_markets()
        market = self.market(symbol) if symbol else None
        rows = await self._rpc("order_trades", self._order_request(id, symbol, params))
        return self.parse_trades(rows, market, since, limit)

    def parse_order(self, w: dict[str, Any], market: Any = None) -> Any:
        market = self.safe_market(w.get("symbol"), market)
        wtype = w.get("type", "")
        return self.safe_order({
            "info": w, "id": w["orderId"], "clientOrderId": w.get("clientOrderId"),
            "timestamp": w["time"], "datetime": self.iso8601(w["time"]),
            "lastTradeTimestamp": w.get("lastTradeTime"), "lastUpdateTimestamp": w.get("updateTime"),
            "symbol": w.get("symbol"), "type": "market" if wtype == "MARKET" else "limit",
            "timeInForce": w.get("timeInForce"), "postOnly": w.get("postOnly"), "side": w["side"].lower(),
            "price": w.get("price"), "triggerPrice": None, "amount": w["origQty"], "cost": w["cummulativeQuoteQty"],
            "average": w.get("avgPrice"), "filled": w["executedQty"], "remaining": None,
            "status": _STATUS.get(w["status"], w["status"].lower()),
            "fee": {"cost": self.safe_number(w, "commission"), "currency": w.get("commissionAsset")},
            "trades": [self.parse_trade(t, market) for t in w.get("fills", [])],
        }, market)

    def parse_trade(self, w: dict[str, Any], market: Any = None) -> Any:
        market = self.safe_market(w.get("symbol"), market)
        return self.safe_trade({
            "info": w, "id": w["id"], "order": w.get("orderId"), "timestamp": w["time"],
            "datetime": self.iso8601(w["time"]), "symbol": w.get("symbol"), "type": None,
            "side": w["side"].lower(), "takerOrMaker": "maker" if w.get("isMaker") else "taker",
            "price": w["price"], "amount": w["qty"], "cost": w["quoteQty"],
            "fee": {"cost": w.get("commission"), "currency": w.get("commissionAsset")},
        }, market)

    # ----------------------------------------------------------------- streaming
    async def _stream(self, subject: str) -> _Stream:
        stream = self._streams.get(subject)
        if stream is None:
            stream = _Stream()
            self._streams[subject] = stream
            stream.handle = await self._tx().subscribe(subject, stream.push)
        return stream

    async def watch_orders(self, symbol: str | None = None, since: int | None = None, limit: int | None = None,
                           params: dict[str, Any] = {}) -> Any:
        """Order updates since the previous call (waits for at least one)."""
        await self.load_markets()
        market = self.market(symbol) if symbol else None
        stream = await self._stream(self.subjects.orders(self.account_name, market["symbol"] if market else None))
        rows = await stream.take()
        return self.filter_by_symbol_since_limit([self.parse_order(r) for r in rows],
                                                 market["symbol"] if market else None, since, limit, True)

    async def watch_my_trades(self, symbol: str | None = None, since: int | None = None, limit: int | None = None,
                              params: dict[str, Any] = {}) -> Any:
        """Our fills since the previous call (waits for at least one)."""
        await self.load_markets()
        market = self.market(symbol) if symbol else None
        stream = await self._stream(self.subjects.trades(self.account_name, market["symbol"] if market else None))
        rows = await stream.take()
        return self.filter_by_symbol_since_limit([self.parse_trade(r) for r in rows],
                                                 market["symbol"] if market else None, since, limit, True)

    async def watch_order_book(self, symbol: str, limit: int | None = None, params: dict[str, Any] = {}) -> Any:
        """The first call returns the current book at once; later calls wait for the next book event."""
        await self.load_markets()
        market = self.market(symbol)
        subject = self.subjects.book(market["symbol"])
        first = subject not in self._streams
        stream = await self._stream(subject)
        if first:
            book = await self.fetch_order_book(market["symbol"], limit)
            self._books[market["symbol"]] = book
            return book
        rows = await stream.take()
        book = self._parse_book(rows[-1], limit)
        self._books[market["symbol"]] = book
        return book
