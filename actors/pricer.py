"""The pricer: keeps the top of book per venue and symbol, and answers `PriceRequested` with a price for
the attempt's mode — or with `PriceUnavailable` when the book is stale, empty or crossed. It never guesses.

Books come from the venue's `watch_order_book` stream when it has one (one watcher per market, started
on the first request), and from `fetch_order_book` on each request otherwise.

Our own resting orders are taken out of the book before it is priced: the venue's book shows them, and
quoting from our own order ("touch" is our price; on a one-tick spread "inside" is too) re-places at the
price we already hold and loses queue place. The pricer learns the account's open orders (every intent's,
whoever placed them) from the venue: `fetch_open_orders` per market when first asked, then the account's
`watch_orders` stream of that market (per symbol: a stream of its own, apart from the reconciler's
account-wide one); when that stream has been silent for `own_orders_refresh_s` the list is fetched
again before pricing, one fetch shared by every quote waiting (and every `own_orders_max_age_s` anyway, in
the background while the stream delivers), so a silently dead stream or a dropped event cannot leave stale
orders in (or out of) the book for long.
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
from venues.gateway import fetch_open_orders, fetch_order_book, market_rules, watch_order_book, watch_orders
from venues.types import OrderBook, VenueOrder, book_from_ccxt

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
    def from_book(cls, book: OrderBook, depth: int) -> BookView:
        return cls(list(book.bids[:depth]), list(book.asks[:depth]), time.monotonic_ns(), (book.timestamp or 0) * 1_000_000)

    @classmethod
    def from_ccxt(cls, book: dict[str, Any], depth: int) -> BookView:
        """From a ccxt book dict (for callers holding one, e.g. bench/latency.py)."""
        return cls.from_book(book_from_ccxt(book, depth), depth)


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


def without_own(levels: list[Level], own: dict[Decimal, Decimal]) -> list[Level]:
    """`levels` less our own resting quantity at each price; a level that was only ours disappears."""
    if not own:
        return levels
    out: list[Level] = []
    for price, size in levels:
        mine = own.get(price)
        if mine:
            size = size - mine
            if size <= 0:
                continue
        out.append((price, size))
    return out


class OwnOrders:
    """Our open orders in one market: order id -> (side, price, remaining, update time), from the venue's
    open-order list and its order stream. Orders seen terminal are remembered (bounded) so a list fetched
    before their end cannot bring them back."""

    CLOSED_LIMIT = 10_000
    LIST_LAG_NS = 1_000_000_000
    """Venues list a fresh order only after a while (Binance: a few hundred ms): an order the stream
    announced this recently is kept even if a list fetched meanwhile does not show it yet."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.open: dict[str, tuple[str, Decimal, Decimal, int]] = {}
        self.seen_ns: dict[str, int] = {}
        """order id -> monotonic ns when we last heard of it open."""
        self.closed: dict[str, None] = {}
        self.seeded_ns: int | None = None
        """Monotonic ns of the last full open-order fetch."""
        self.last_event_ns = 0
        self.broken = False
        """The order stream failed and has not delivered since: fetch the list on every request."""
        self._levels: dict[str, dict[Decimal, Decimal]] = {}
        """side -> price -> our remaining quantity, rebuilt after a change (thousands of resting orders
        must not cost a pass over all of them per quote)."""

    def apply(self, order: VenueOrder) -> None:
        oid = order.id
        if order.symbol not in (None, self.symbol) or oid is None:
            return
        if oid in self.closed:
            return
        self._levels.clear()
        book = self.open
        ts = order.last_update_ms or order.timestamp or 0
        known = book.get(oid)
        if known is not None and known[3] > ts:
            return  # an older view of the order than the one we hold
        # The venue's own decimal strings where it sends them (ccxt's float otherwise).
        price = order.exact_price
        amount = order.exact_amount
        filled = order.exact_filled or Decimal(0)
        if order.status != "open" or price is None or amount is None or amount - filled <= 0:
            book.pop(oid, None)
            self.seen_ns.pop(oid, None)
            if order.status in ("closed", "canceled", "expired", "rejected"):
                self.closed[oid] = None
                while len(self.closed) > self.CLOSED_LIMIT:
                    self.closed.pop(next(iter(self.closed)))
            return
        book[oid] = (str(order.side), price, amount - filled, ts)
        self.seen_ns[oid] = time.monotonic_ns()

    def replace(self, orders: list[VenueOrder], fetched_ns: int) -> None:
        """A fresh open-order list: anything not in it is no longer open."""
        self._levels.clear()
        listed = {str(o.id) for o in orders}
        for oid in [oid for oid in self.open if oid not in listed]:
            if fetched_ns - self.seen_ns.get(oid, 0) > self.LIST_LAG_NS:
                del self.open[oid]
                self.seen_ns.pop(oid, None)
        for order in orders:
            self.apply(order)
        self.seeded_ns = fetched_ns

    def levels(self, side: str) -> dict[Decimal, Decimal]:
        cached = self._levels.get(side)
        if cached is not None:
            return cached
        out: dict[Decimal, Decimal] = {}
        for s, price, remaining, _ in self.open.values():
            if s == side:
                out[price] = out.get(price, Decimal(0)) + remaining
        self._levels[side] = out
        return out


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


OWN_LIST_TIMEOUT_S = 30.0
"""A list fetch that never returns must not hold every later one back (one runs at a time per market)."""


class Pricer(Actor[None]):
    name = "pricer"
    consumes = (PriceRequested,)
    produces = (PriceQuoted, PriceUnavailable)

    def __init__(
        self, venues: Any, *, max_age_s: float = 5.0, depth: int = 100, first_book_timeout_s: float = 3.0,
        exclude_own_orders: bool = True, own_orders_refresh_s: float = 3.0, own_orders_max_age_s: float = 30.0,
    ) -> None:
        self._exclude_own = exclude_own_orders
        self._own_refresh_ns = int(own_orders_refresh_s * 1e9)
        self._own_max_age_ns = int(own_orders_max_age_s * 1e9)
        """The open-order list is fetched again at least this often, even while the stream delivers (a
        dropped event must not keep a gone order out of the book for good)."""
        self._own: dict[tuple[str, str], OwnOrders] = {}
        self._own_watchers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._own_refreshes: dict[tuple[str, str], asyncio.Task[None]] = {}
        """The open-order list fetch under way per venue and symbol: one at a time, however many quote."""
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
        tasks = [*self._watchers.values(), *self._own_watchers.values(), *self._own_refreshes.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
        self._own_watchers.clear()
        self._own_refreshes.clear()

    def status(self) -> dict[str, Any]:
        now = time.monotonic_ns()
        return {
            "quoted": self.quoted,
            "own_orders": {f"{v}:{s}": len(o.open) for (v, s), o in self._own.items()},
            "unavailable": self.unavailable,
            "books": {f"{v}:{s}": round((now - b.received_ns) / 1e6, 1) for (v, s), b in self._books.items()},
        }

    async def handle(self, msg: Message, ctx: IntentContext[None]) -> None:
        assert isinstance(msg, PriceRequested)
        try:
            exchange = await self._venues.get(msg.venue)
            book = await self._book(exchange, msg.venue, msg.symbol)
            own_bids, own_asks = await self._own_levels(exchange, msg.venue, msg.symbol, ctx)
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
        bids, asks = without_own(book.bids, own_bids), without_own(book.asks, own_asks)
        if not bids or not asks:
            await self._unavailable(msg, ctx, "order book has an empty side" + (" without our own orders" if book.bids and book.asks else ""))
            return
        bid, ask = bids[0][0], asks[0][0]
        if bid >= ask:
            await self._unavailable(msg, ctx, f"order book is crossed ({bid} >= {ask})")
            return
        tick = market_rules(exchange, msg.symbol)["tick_size"] or Decimal("0.00000001")
        sweep = sweep_average(asks if msg.side == "buy" else bids, msg.qty)
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

    async def _own_levels(self, exchange: Any, venue: str, symbol: str, ctx: IntentContext[None]) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        """Our resting quantity per price: (bids, asks). Empty when the venue cannot list open orders or
        the first lookup fails (logged: the quote may then include our own orders, as there is no way
        to tell)."""
        if not self._exclude_own or not exchange.has.get("fetchOpenOrders"):
            return {}, {}
        key = (venue, symbol)
        own = self._own.get(key)
        if own is None:
            own = self._own[key] = OwnOrders(symbol)
        streaming = bool(exchange.has.get("watchOrders"))
        if streaming and key not in self._own_watchers:
            self._own_watchers[key] = asyncio.create_task(self._watch_own(exchange, own), name=f"own-{venue}-{symbol}")
            self._start_refresh(key, exchange, own, venue, settle=True)
        now = time.monotonic_ns()
        # Without a live stream the list is all we know: wait for one, shared by every quote meanwhile. A
        # stream silent for `own_orders_refresh_s` may be dead without saying so: that counts as none. With
        # one that delivers, the list is only the safety net for a dropped event (`own_orders_max_age_s`):
        # refreshed in the background, quotes meanwhile use what the stream keeps current. (Each quote
        # fetching its own list was a pass over every resting order per quote: with thousands resting and
        # sixty-four quotes at once, seconds of the event loop.)
        blind = (
            own.seeded_ns is None or not streaming or own.broken or self._own_watchers[key].done()
            or now - max(own.last_event_ns, own.seeded_ns) > self._own_refresh_ns
        )
        if blind or now - (own.seeded_ns or 0) > self._own_max_age_ns:
            refresh = self._start_refresh(key, exchange, own, venue)
            if blind:
                try:
                    await asyncio.shield(refresh)
                except Exception as exc:
                    ctx.log.warning("own_orders_unknown", venue=venue, symbol=symbol, error=repr(exc))
                    if own.seeded_ns is None:
                        return {}, {}
        return own.levels("buy"), own.levels("sell")

    def _start_refresh(
        self, key: tuple[str, str], exchange: Any, own: OwnOrders, venue: str, *, settle: bool = False
    ) -> asyncio.Task[None]:
        """The list fetch under way for the market, or a new one: one at a time, however many quote."""
        refresh = self._own_refreshes.get(key)
        if refresh is None or refresh.done():
            refresh = self._own_refreshes[key] = asyncio.create_task(
                self._refresh_own(exchange, own, venue, settle=settle), name=f"own-list-{venue}-{own.symbol}"
            )
            refresh.add_done_callback(lambda t: t.cancelled() or t.exception())  # (logged in it already)
        return refresh

    async def _refresh_own(self, exchange: Any, own: OwnOrders, venue: str, *, settle: bool = False) -> None:
        """One fetch of the open-order list (what it does not show was closed before it was taken). The first
        lets the new order stream reach its subscription first: an event between the list and the
        subscription would be lost until the next list."""
        if settle:
            for _ in range(3):
                await asyncio.sleep(0)
        started = time.monotonic_ns()
        try:
            orders = await asyncio.wait_for(fetch_open_orders(exchange, own.symbol), OWN_LIST_TIMEOUT_S)
            own.replace(orders, started)
        except Exception as exc:
            log.warning("own_orders_refresh_failed", venue=venue, symbol=own.symbol, error=repr(exc))
            raise

    async def _watch_own(self, exchange: Any, own: OwnOrders) -> None:
        backoff = 0.1
        while True:
            try:
                orders = await watch_orders(exchange, own.symbol)
                own.last_event_ns = time.monotonic_ns()
                own.broken = False
                for order in orders:
                    own.apply(order)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke: the open-order list is fetched again meanwhile
                own.broken = True
                log.warning("own_orders_stream_error", symbol=own.symbol, error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _book(self, exchange: Any, venue: str, symbol: str) -> BookView | None:
        key = (venue, symbol)
        if not exchange.has.get("watchOrderBook"):
            return BookView.from_book(await fetch_order_book(exchange, symbol, self._depth), self._depth)
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
                book = await watch_order_book(exchange, symbol, self._depth)
                self._books[key] = BookView.from_book(book, self._depth)
                self._ready[key].set()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke: the book ages until it is back, never guessed
                log.warning("book_stream_error", venue=venue, symbol=symbol, error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
