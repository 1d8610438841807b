"""The pricer: keeps the top of book per venue and symbol, and answers `PriceRequested` with a price for
the attempt's mode — or with `PriceUnavailable` when the book is stale, empty or crossed. It never guesses.

Books come from the venue's `watch_order_book` stream when it has one (one watcher per market, started
on the first request), and from `fetch_order_book` on each request otherwise.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import structlog

from bus.actor import Actor, IntentContext, Services
from messages import PriceQuoted, PriceRequested, PriceUnavailable
from messages.base import Message, routing
from venues.gateway import market_rules, to_decimal

__all__ = ["Pricer", "BookView", "price_for_mode", "sweep_average"]

log = structlog.get_logger("execbus.actor.pricer")

Level = tuple[Decimal, Decimal]


class BookView:
    """The part of one book the pricer needs, in Decimals, with the local time it was received."""

    def __init__(self, bids: list[Level], asks: list[Level], received_ns: int, ts_ns: int) -> None:
        self.bids = bids
        self.asks = asks
        self.received_ns = received_ns
        self.ts_ns = ts_ns

    @classmethod
    def from_ccxt(cls, book: dict[str, Any], depth: int) -> BookView:
        def levels(side: list[list[Any]]) -> list[Level]:
            return [(to_decimal(p), to_decimal(q)) for p, q, *_ in side[:depth]]  # type: ignore[misc]

        ts = book.get("timestamp") or 0
        return cls(levels(book.get("bids") or []), levels(book.get("asks") or []), time.monotonic_ns(), int(ts) * 1_000_000)


def price_for_mode(mode: str, side: str, bid: Decimal, ask: Decimal, tick: Decimal) -> Decimal:
    """The limit price of one attempt mode. `inside` improves our side by one tick unless that would
    cross, in which case it stays at the touch."""
    if mode == "arrival":
        return (bid + ask) / 2
    if mode == "touch":
        return bid if side == "buy" else ask
    if mode == "inside":
        if side == "buy":
            return bid + tick if bid + tick < ask else bid
        return ask - tick if ask - tick > bid else ask
    if mode == "cross":
        return ask if side == "buy" else bid
    raise ValueError(f"unknown price mode {mode!r}")


def sweep_average(levels: list[Level], qty: Decimal) -> Decimal | None:
    """Average price of taking `qty` from `levels` (best first); None if the visible book is too thin."""
    left, cost = qty, Decimal(0)
    for price, size in levels:
        take = min(left, size)
        cost += take * price
        left -= take
        if left <= 0:
            return cost / qty
    return None


class Pricer(Actor[None]):
    name = "pricer"
    consumes = (PriceRequested,)

    def __init__(self, venues: Any, *, max_age_s: float = 5.0, depth: int = 100, first_book_timeout_s: float = 3.0) -> None:
        self._venues = venues
        self._max_age_ns = int(max_age_s * 1e9)
        self._depth = depth
        self._first_book_timeout = first_book_timeout_s
        self._books: dict[tuple[str, str], BookView] = {}
        self._ready: dict[tuple[str, str], asyncio.Event] = {}
        self._watchers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.quoted = 0
        self.unavailable = 0

    async def start(self, services: Services) -> None:
        self._services = services

    async def stop(self) -> None:
        for task in self._watchers.values():
            task.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        self._watchers.clear()

    def status(self) -> dict[str, Any]:
        now = time.monotonic_ns()
        return {
            "quoted": self.quoted,
            "unavailable": self.unavailable,
            "books": {f"{v}:{s}": round((now - b.received_ns) / 1e6, 1) for (v, s), b in self._books.items()},
        }

    async def handle(self, msg: Message, ctx: IntentContext[None]) -> None:
        assert isinstance(msg, PriceRequested)
        try:
            exchange = await self._venues.get(msg.venue)
            book = await self._book(exchange, msg.venue, msg.symbol)
        except Exception as exc:  # the venue is down: say so, the supervisor decides
            await self._unavailable(msg, ctx, f"venue error: {exc!r}")
            return
        if book is None:
            await self._unavailable(msg, ctx, "no order book received yet")
            return
        age_ns = time.monotonic_ns() - book.received_ns
        if age_ns > self._max_age_ns:
            await self._unavailable(msg, ctx, "order book is stale", age_ms=age_ns // 1_000_000)
            return
        if not book.bids or not book.asks:
            await self._unavailable(msg, ctx, "order book has an empty side")
            return
        bid, ask = book.bids[0][0], book.asks[0][0]
        if bid >= ask:
            await self._unavailable(msg, ctx, f"order book is crossed ({bid} >= {ask})")
            return
        tick = market_rules(exchange, msg.symbol)["tick_size"] or Decimal("0.00000001")
        sweep = sweep_average(book.asks if msg.side == "buy" else book.bids, msg.qty)
        self.quoted += 1
        await ctx.publish(
            PriceQuoted(
                **routing(msg),
                attempt=msg.attempt,
                side=msg.side,
                mode=msg.mode,
                price=price_for_mode(msg.mode, msg.side, bid, ask, tick),
                bid=bid,
                ask=ask,
                tick_size=tick,
                sweep_avg_price=sweep,
                book_ts_ns=book.ts_ns,
                request=msg.request,
            )
        )

    async def _unavailable(self, msg: PriceRequested, ctx: IntentContext[None], reason: str, age_ms: int | None = None) -> None:
        self.unavailable += 1
        ctx.log.warning("price_unavailable", reason=reason, attempt=msg.attempt)
        await ctx.publish(
            PriceUnavailable(
                **routing(msg),
                attempt=msg.attempt,
                reason=reason,
                book_age_ms=age_ms,
                request=msg.request,
            )
        )

    async def _book(self, exchange: Any, venue: str, symbol: str) -> BookView | None:
        key = (venue, symbol)
        if not exchange.has.get("watchOrderBook"):
            return BookView.from_ccxt(await exchange.fetch_order_book(symbol, self._depth), self._depth)
        if key not in self._watchers:
            self._ready[key] = asyncio.Event()
            self._watchers[key] = asyncio.create_task(self._watch(exchange, key), name=f"book-{venue}-{symbol}")
        if key not in self._books:
            try:
                await asyncio.wait_for(self._ready[key].wait(), self._first_book_timeout)
            except asyncio.TimeoutError:
                return None
        return self._books.get(key)

    async def _watch(self, exchange: Any, key: tuple[str, str]) -> None:
        venue, symbol = key
        backoff = 0.1
        while True:
            try:
                book = await exchange.watch_order_book(symbol)
                self._books[key] = BookView.from_ccxt(book, self._depth)
                self._ready[key].set()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke: the book ages until it is back, never guessed
                log.warning("book_stream_error", venue=venue, symbol=symbol, error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
