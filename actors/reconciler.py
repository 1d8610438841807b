"""The reconciler: turns what the venue says about our orders into `OrderFilled` and `OrderFinalized`.

It is the only actor that declares an order terminal, and it does so only once every fill of the order is
published (fills are deduplicated by trade id). Sources, in order of speed:

- the venue's `watch_orders` / `watch_my_trades` streams (event-based), when the venue has them;
- polling `fetch_order` on a timer, which also catches whatever the streams dropped;
- an immediate check after a cancel was accepted or refused, since the supervisor waits on it.

A network error is never read as "not found", and "not found" right after placement is only counted and
retried: venues answer that for a while after accepting an order.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import ccxt
import msgspec
import structlog

from bus.actor import Actor, IntentContext, Services
from messages import (
    CancelRejected,
    OrderCanceled,
    OrderFilled,
    OrderFinalized,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
)
from messages.base import Message
from venues.gateway import fetch_my_trades, fetch_order, fetch_order_trades, watch_my_trades, watch_orders
from venues.types import VenueOrder, VenueTrade

__all__ = ["Reconciler", "ReconcilerState", "Watched"]

log = structlog.get_logger("execbus.actor.reconciler")
NS = 1_000_000_000
FINAL_STATUS = {"closed": "filled", "canceled": "canceled", "expired": "expired", "rejected": "rejected"}
ORPHAN_LIMIT = 10_000
ORPHAN_TTL_S = 60.0
DONE_LIMIT = 100_000


class Watched(msgspec.Struct, kw_only=True):
    client_order_id: str
    attempt: int
    side: str
    order_id: str | None = None
    trade_ids: list[str] = msgspec.field(default_factory=list)
    filled: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    final: bool = False
    canceling: bool = False
    not_found: int = 0
    venue_status: str | None = None
    """The venue's terminal status, once seen, while some of its trades are still missing here."""
    venue_filled: Decimal = Decimal(0)
    fees: dict[str, Decimal] = msgspec.field(default_factory=dict)
    """Fees published in fills so far, per currency (to book the rest of the order's fee with a gap fill)."""
    created_ms: int | None = None
    """The venue's creation time of the order: the start of the window its trades are looked up in."""
    updated_ms: int | None = None
    """The venue's last update (or trade) time of the order: the window's end."""
    trade_waits: int = 0
    """Times the order was seen terminal with trades still missing here."""
    waiting_since_ns: int = 0
    reason: str = ""
    """Why the order was finalized the way it was, when that needs saying (missing trades)."""


class ReconcilerState(msgspec.Struct, kw_only=True):
    venue: str
    symbol: str
    orders: dict[str, Watched] = msgspec.field(default_factory=dict)


class Reconciler(Actor[ReconcilerState]):
    name = "reconciler"
    consumes = (PlaceOrder, OrderPlaced, OrderRejected, OrderCanceled, CancelRejected)
    produces = (OrderFilled, OrderFinalized, OrderPlaced, OrderCanceled)
    moves_money = True  # start-up reconciliation cancels open orders nobody watches
    State = ReconcilerState

    def __init__(
        self,
        venues: Any,
        *,
        poll_interval_s: float = 2.0,
        max_poll_interval_s: float = 30.0,
        confirm_interval_s: float = 0.2,
        use_streams: bool = True,
        watch_venues: tuple[str, ...] = ("paper",),
        stream_silence_s: float = 3.0,
        trade_wait_tries: int = 10,
        trade_wait_s: float = 10.0,
        trades_page_limit: int = 100,
        trades_max_pages: int = 20,
        trades_since_margin_ms: int = 1_000,
    ) -> None:
        self._watch_venues = watch_venues
        self._venues = venues
        self._poll_ns = int(poll_interval_s * NS)
        self._max_poll_ns = max(int(max_poll_interval_s * NS), self._poll_ns)
        self._quiet: dict[str, int] = {}
        """Client order id -> polls in a row that found nothing the venue's streams had not already said.
        While the streams are healthy each one doubles the wait before the next poll (up to
        `max_poll_interval_s`): with thousands of open orders a fixed 2 s poll of each kept a core busy doing
        nothing. Kept in memory, not in the state: counting must not cost a state write per poll (after a
        restart the count starts again from the base interval)."""
        self._stream_broken: dict[str, float] = {}
        """venue -> when its order or trade stream last failed (polling is then the only source)."""
        self._stream_seen: dict[str, float] = {}
        """venue -> when its streams last delivered anything (or were opened). A stream silent for longer
        than `stream_silence_s` while orders are open is not trusted: it may be dead without saying so."""
        self._silence_s = stream_silence_s
        self._trade_wait_tries = trade_wait_tries
        self._trade_wait_ns = int(trade_wait_s * NS)
        """A terminal order whose trades stay missing is finalized after this many looks and this long
        (both), with the gap booked at the order's average price and the reason said (`_apply_order`)."""
        self._page_limit = trades_page_limit
        self._max_pages = trades_max_pages
        self._since_margin_ms = trades_since_margin_ms
        self._confirm_ns = int(confirm_interval_s * NS)
        self._use_streams = use_streams
        self._services: Services | None = None
        self._routes: dict[tuple[str, str], tuple[str, int]] = {}  # (venue, cid or "#"+order id) -> intent
        self._orphans: OrderedDict[tuple[str, str], list[tuple[float, str, VenueOrder | VenueTrade]]] = OrderedDict()
        self._streams: dict[str, list[asyncio.Task[None]]] = {}
        self._done: OrderedDict[str, None] = OrderedDict()
        """Client order ids recently finalized: a message about one of them that arrives after the intent's
        state was dropped (an OrderPlaced queued behind the venue's own terminal event) must not start
        watching it again."""
        self.stats = {"fills": 0, "finalized": 0, "polls": 0, "stream_events": 0, "synthesized": 0}

    async def start(self, services: Services) -> None:
        """Open the venues' order and trade streams now, so the first order's events are not missed
        (a stream opened lazily at the first order can subscribe after that order already filled)."""
        self._services = services
        for venue in self._watch_venues:
            try:
                await self._ensure_streams(venue)
            except Exception as exc:  # the venue is not up yet: open its streams at its first order
                log.warning("venue_streams_deferred", venue=venue, error=repr(exc))

    async def stop(self) -> None:
        tasks = [t for ts in self._streams.values() for t in ts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._streams.clear()

    def status(self) -> dict[str, Any]:
        return {**self.stats, "watched": len(self._routes), "orphans": len(self._orphans), "streams": list(self._streams)}

    # -- messages ---------------------------------------------------------------------------------------

    async def handle(self, msg: Message, ctx: IntentContext[ReconcilerState]) -> None:
        if ctx.state is None and getattr(msg, "client_order_id", None) in self._done:
            return
        state = ctx.state or ReconcilerState(venue=msg.venue, symbol=msg.symbol)
        match msg:
            case PlaceOrder():
                if msg.client_order_id not in state.orders:
                    state.orders[msg.client_order_id] = Watched(
                        client_order_id=msg.client_order_id, attempt=msg.attempt, side=msg.side
                    )
                self._route(state.venue, msg.client_order_id, None, ctx)
                await self._ensure_streams(state.venue)
            case OrderPlaced():
                watched = state.orders.setdefault(
                    msg.client_order_id,
                    Watched(client_order_id=msg.client_order_id, attempt=msg.attempt, side=msg.side),
                )
                watched.order_id = msg.order_id
                self._route(state.venue, msg.client_order_id, msg.order_id, ctx)
                await self._ensure_streams(state.venue)
                await self._replay_orphans(state, watched, ctx)
            case OrderRejected():
                watched = state.orders.get(msg.client_order_id)
                if watched is not None and msg.error != "StaleEpoch":  # (a fenced copy: the real order stands)
                    watched.final = True  # nothing rests at the venue; the rejection itself is the terminal event
                    self._unroute(state.venue, watched)
            case OrderCanceled() | CancelRejected():
                watched = state.orders.get(msg.client_order_id)
                if watched is not None and not watched.final:
                    watched.canceling = True
                    watched.order_id = watched.order_id or msg.order_id
                    await self._poll(state, watched, ctx)
        self._commit(state, ctx)

    begins_intent = (PlaceOrder,)

    async def rebuild(
        self, history: list[tuple[int, Message]], stored: ReconcilerState | None, ctx: IntentContext[ReconcilerState]
    ) -> ReconcilerState | None:
        """Taking over: every order of the intent in the log that is not declared terminal there is watched,
        whatever the snapshot kept (a watch lost with a replica would leave its order for ever unconfirmed)."""
        state = stored
        finalized = {m.client_order_id for _, m in history if isinstance(m, OrderFinalized)}
        for _seq, msg in history:
            if not isinstance(msg, PlaceOrder | OrderPlaced | OrderRejected | OrderCanceled | CancelRejected):
                continue
            if state is None:
                state = ReconcilerState(venue=msg.venue, symbol=msg.symbol)
            cid = msg.client_order_id
            match msg:
                case PlaceOrder() | OrderPlaced():
                    watched = state.orders.setdefault(cid, Watched(client_order_id=cid, attempt=msg.attempt, side=msg.side))
                    if isinstance(msg, OrderPlaced):
                        watched.order_id = watched.order_id or msg.order_id
                case OrderRejected():
                    if msg.error != "StaleEpoch" and cid in state.orders:
                        state.orders[cid].final = True
                case OrderCanceled() | CancelRejected():
                    watched = state.orders.get(cid)
                    if watched is not None and not watched.final:
                        watched.canceling = True
                        watched.order_id = watched.order_id or msg.order_id
        if state is not None:
            for cid in finalized:
                if cid in state.orders:
                    state.orders[cid].final = True  # declared terminal (after all its fills) already
        return state

    async def on_timer(self, ctx: IntentContext[ReconcilerState]) -> None:
        state = ctx.state
        if state is None:
            return
        for watched in list(state.orders.values()):
            if not watched.final and watched.order_id is not None:
                await self._poll(state, watched, ctx)
        self._commit(state, ctx)

    async def on_resume(self, ctx: IntentContext[ReconcilerState]) -> None:
        """Taking over: route the venue's events to these orders again and check each one now, since
        fills may have happened while nobody was watching."""
        state = ctx.state
        if state is None:
            return
        await self._ensure_streams(state.venue)
        for watched in state.orders.values():
            if not watched.final:
                self._route(state.venue, watched.client_order_id, watched.order_id, ctx)
        await self.on_timer(ctx)

    def _commit(self, state: ReconcilerState, ctx: IntentContext[ReconcilerState]) -> None:
        open_orders = [w for w in state.orders.values() if not w.final]
        if not open_orders:
            for watched in state.orders.values():
                self._unroute(state.venue, watched)
            ctx.forget()
            return
        ctx.save(state)
        if any(w.canceling for w in open_orders):
            interval = self._confirm_ns
        elif self._streams_healthy(state.venue):
            quiet = min(self._quiet.get(w.client_order_id, 0) for w in open_orders)
            interval = min(self._poll_ns << min(quiet, 16), self._max_poll_ns)
        else:
            interval = self._poll_ns
        ctx.wake_at(ctx.clock.now_ns() + interval)

    def _streams_healthy(self, venue: str) -> bool:
        tasks = self._streams.get(venue)
        if not tasks or any(t.done() for t in tasks):
            return False
        seen = self._stream_seen.get(venue)
        if seen is None or time.monotonic() - seen > self._silence_s:
            return False  # called with orders open: a stream this quiet may be dead without an error
        broken = self._stream_broken.get(venue)
        return broken is None or time.monotonic() - broken > self._max_poll_ns / NS

    # -- venue truth ------------------------------------------------------------------------------------

    async def _poll(self, state: ReconcilerState, watched: Watched, ctx: IntentContext[ReconcilerState]) -> None:
        if watched.order_id is None:
            return
        self.stats["polls"] += 1
        exchange = await self._venues.get(state.venue)
        before = (watched.filled, watched.final, watched.venue_status, watched.canceling, watched.not_found)
        try:
            order = await fetch_order(exchange, watched.order_id, state.symbol)
        except ccxt.OrderNotFound:
            watched.not_found += 1  # venues lag after placement: keep asking, conclude nothing
            ctx.log.info("order_not_found_yet", client_order_id=watched.client_order_id, times=watched.not_found)
            return
        except ccxt.BaseError as exc:
            ctx.log.info("order_poll_failed", client_order_id=watched.client_order_id, error=type(exc).__name__)
            return
        await self._apply_order(state, watched, order, ctx, polled=True)
        unchanged = (watched.filled, watched.final, watched.venue_status, watched.canceling, watched.not_found) == before
        behind = (order.filled or Decimal(0)) > watched.filled  # trades still to fetch
        cid = watched.client_order_id
        self._quiet[cid] = self._quiet.get(cid, 0) + 1 if unchanged and not behind and not watched.final else 0

    async def _apply_event_trade(self, state: ReconcilerState, watched: Watched, trade: VenueTrade, ctx: IntentContext[ReconcilerState]) -> None:
        """A trade from the stream (or kept as an orphan). Without a venue id its id is derived from its
        content; the first of identical trades is unambiguous, but another identical one cannot be told
        from a repeat of it here, so the order's trade list (where their positions are known) decides."""
        if trade.id is not None:
            await self._apply_trade(state, watched, trade, ctx)
            return
        prefix = _content_key(trade, watched.order_id)
        if not any(t.startswith(prefix) for t in watched.trade_ids):
            await self._apply_trade(state, watched, trade, ctx, prefix + "0")
            return
        await self._fetch_missing_trades(state, watched, ctx)

    async def _apply_trade(
        self, state: ReconcilerState, watched: Watched, trade: VenueTrade, ctx: IntentContext[ReconcilerState],
        trade_id: str | None = None,
    ) -> None:
        if trade_id is None:
            if trade.id is None:
                ctx.log.warning("trade_without_id_outside_its_list", client_order_id=watched.client_order_id)
                return
            trade_id = trade.id
        if trade_id in watched.trade_ids or watched.final:
            return
        qty = trade.exact_amount  # the venue's own decimal string where it sends one
        price = trade.exact_price
        if qty is None or price is None or qty <= 0:
            ctx.log.warning("trade_without_amount", trade_id=trade_id)
            return
        fee_cost = trade.fee_cost or Decimal(0)
        fee_currency = trade.fee_currency or ""
        watched.trade_ids.append(trade_id)
        watched.filled += qty
        watched.notional += qty * price
        if fee_cost:
            watched.fees[fee_currency] = watched.fees.get(fee_currency, Decimal(0)) + fee_cost
        self.stats["fills"] += 1
        await ctx.publish(
            OrderFilled(
                intent_id=ctx.intent_id,
                venue=state.venue,
                symbol=state.symbol,
                client_order_id=watched.client_order_id,
                order_id=str(watched.order_id or trade.order_id),
                trade_id=trade_id,
                attempt=watched.attempt,
                side=watched.side,  # type: ignore[arg-type]
                qty=qty,
                price=price,
                fee=fee_cost,
                fee_currency=fee_currency,
                liquidity="maker" if trade.taker_or_maker == "maker" else "taker",
            )
        )
        if watched.venue_status in FINAL_STATUS and watched.filled >= watched.venue_filled:
            await self._finalize(state, watched, ctx)

    async def _apply_order(
        self, state: ReconcilerState, watched: Watched, order: VenueOrder, ctx: IntentContext[ReconcilerState],
        *, polled: bool = False,
    ) -> None:
        if watched.final:
            return
        watched.order_id = watched.order_id or str(order.id)
        if watched.created_ms is None and order.timestamp is not None:
            watched.created_ms = order.timestamp
        updated = [t for t in (order.last_update_ms, order.last_trade_ms) if t is not None]
        if updated:
            watched.updated_ms = max(updated + ([watched.updated_ms] if watched.updated_ms is not None else []))
        venue_filled = order.filled or Decimal(0)
        status = order.status
        if venue_filled > watched.filled and (polled or status in FINAL_STATUS):
            # From the stream, an open order ahead of its trade events just means they are on the way;
            # a poll, or a terminal order, needs every trade now.
            await self._fetch_missing_trades(state, watched, ctx)
        if status not in FINAL_STATUS:
            return
        watched.venue_status, watched.venue_filled = status, venue_filled
        if venue_filled > watched.filled:
            exchange = await self._venues.get(state.venue)
            if exchange.has.get("fetchMyTrades") or exchange.has.get("fetchOrderTrades"):
                # Its trades exist but we could not see them yet (the lookup failed or lags): wait for
                # them, never invent one that the real trade would later double. A quick poll retries,
                # for a bounded number of looks and time; after that the gap is booked and said.
                now = ctx.clock.now_ns()
                if not watched.trade_waits:
                    watched.waiting_since_ns = now
                watched.trade_waits += 1
                if watched.trade_waits < self._trade_wait_tries or now - watched.waiting_since_ns < self._trade_wait_ns:
                    watched.canceling = True
                    ctx.log.info("terminal_order_waits_for_trades", client_order_id=watched.client_order_id,
                                 times=watched.trade_waits)
                    return
                watched.reason = (
                    f"trades missing: the venue reports {venue_filled} filled but its trade history showed "
                    f"{watched.filled} after {watched.trade_waits} looks over "
                    f"{(now - watched.waiting_since_ns) / NS:.1f} s; the missing {venue_filled - watched.filled} "
                    f"is booked as one fill at the order's average price"
                )
                ctx.log.error("terminal_order_trades_missing", client_order_id=watched.client_order_id,
                              reason=watched.reason)
            if not await self._synthesize(state, watched, order, venue_filled, ctx):
                watched.canceling = True  # cannot be priced: ask again (the error is logged)
                return
        await self._finalize(state, watched, ctx)

    async def _finalize(self, state: ReconcilerState, watched: Watched, ctx: IntentContext[ReconcilerState]) -> None:
        if watched.final or watched.venue_status not in FINAL_STATUS:
            return
        if watched.filled > watched.venue_filled:
            ctx.log.error("fills_exceed_venue_filled", ours=str(watched.filled), venue=str(watched.venue_filled))
        watched.final = True
        self._unroute(state.venue, watched)
        self._done[watched.client_order_id] = None
        while len(self._done) > DONE_LIMIT:
            self._done.popitem(last=False)
        self.stats["finalized"] += 1
        await ctx.publish(
            OrderFinalized(
                intent_id=ctx.intent_id,
                venue=state.venue,
                symbol=state.symbol,
                client_order_id=watched.client_order_id,
                order_id=watched.order_id,
                attempt=watched.attempt,
                status=FINAL_STATUS[watched.venue_status],  # type: ignore[arg-type]
                filled_qty=watched.filled,
                avg_price=(watched.notional / watched.filled) if watched.filled else None,
                reason=watched.reason,
            )
        )

    async def _fetch_missing_trades(self, state: ReconcilerState, watched: Watched, ctx: IntentContext[ReconcilerState]) -> None:
        exchange = await self._venues.get(state.venue)
        try:
            if exchange.has.get("fetchOrderTrades"):
                trades = await fetch_order_trades(exchange, watched.order_id, state.symbol)
            else:
                trades = await self._fetch_my_trades_window(exchange, state.symbol, watched)
        except ccxt.BaseError as exc:
            ctx.log.info("trade_fetch_failed", error=type(exc).__name__)
            return
        mine = [t for t in trades if str(t.order_id) == watched.order_id]
        for trade, trade_id in with_trade_ids(mine, watched.order_id):
            await self._apply_trade(state, watched, trade, ctx, trade_id)

    async def _fetch_my_trades_window(self, exchange: Any, symbol: str, watched: Watched) -> list[VenueTrade]:
        """The account's trades in the order's time window, oldest first: from its creation time (less a
        margin) forward, page by page, until a page passes the order's last update, comes back empty, or
        is short and reaches that update (a short page alone proves nothing: venues cap `limit` below
        what was asked), or the page budget is spent. A later page starts at the previous page's last
        timestamp and replaces what the previous one had from that instant on, so trades sharing a
        timestamp come from one page (their positions there name the ones without ids). More trades in
        one instant than a page holds cannot be read this way: they are left to the bounded wait."""
        if watched.created_ms is None:
            return await fetch_my_trades(exchange, symbol, None, self._page_limit)
        since = watched.created_ms - self._since_margin_ms
        end = watched.updated_ms
        found: list[VenueTrade] = []
        for _ in range(self._max_pages):
            page = await fetch_my_trades(exchange, symbol, since, self._page_limit)
            found = [t for t in found if (t.timestamp or 0) < since] + page
            if not page:
                break
            last = max((t.timestamp or 0) for t in page)
            if end is None:
                if len(page) < self._page_limit:
                    break
            elif last > end or (len(page) < self._page_limit and last >= end):
                break
            since = last if last > since else since + 1  # a page of one instant: step past it
        return found

    async def _synthesize(self, state: ReconcilerState, watched: Watched, order: VenueOrder, venue_filled: Decimal, ctx: IntentContext[ReconcilerState]) -> bool:
        """The venue reports more filled than the trades we could see (a venue without trade history, or
        trades that never showed up): book the difference at the order's average price, with the rest of
        the order's fee, so totals stay exact in quantity. False if it cannot be priced."""
        delta = venue_filled - watched.filled
        average = order.average or order.price
        if average is None:
            ctx.log.error("cannot_price_missing_fill", client_order_id=watched.client_order_id, qty=str(delta))
            return False
        self.stats["synthesized"] += 1
        price = (average * venue_filled - watched.notional) / delta
        if price <= 0:
            price = average
        fee_rest: Decimal | None = None
        fee_currency = ""
        fee_cost = order.fee.cost if order.fee is not None else None
        if fee_cost is not None:
            fee_currency = order.fee.currency or ""  # type: ignore[union-attr]
            rest = fee_cost - watched.fees.get(fee_currency, Decimal(0))
            if rest:
                fee_rest = rest
        trade = VenueTrade(
            id=f"{watched.order_id}-cum-{venue_filled}", amount=delta, price=price, order_id=watched.order_id,
            fee_cost=fee_rest, fee_currency=(fee_currency or None) if fee_rest is not None else None,
        )
        await self._apply_trade(state, watched, trade, ctx)
        return True

    # -- streams ----------------------------------------------------------------------------------------

    def _route(self, venue: str, cid: str, order_id: str | None, ctx: IntentContext[ReconcilerState]) -> None:
        target = (ctx.intent_id, ctx.partition)
        self._routes[(venue, cid)] = target
        if order_id is not None:
            self._routes[(venue, "#" + order_id)] = target

    def _unroute(self, venue: str, watched: Watched) -> None:
        self._quiet.pop(watched.client_order_id, None)
        self._routes.pop((venue, watched.client_order_id), None)
        if watched.order_id is not None:
            self._routes.pop((venue, "#" + watched.order_id), None)
            self._orphans.pop((venue, watched.order_id), None)

    async def _ensure_streams(self, venue: str) -> None:
        if not self._use_streams or venue in self._streams:
            return
        exchange = await self._venues.get(venue)
        tasks: list[asyncio.Task[None]] = []
        if exchange.has.get("watchOrders"):
            tasks.append(asyncio.create_task(self._stream(exchange, venue, "order"), name=f"orders-{venue}"))
        if exchange.has.get("watchMyTrades"):
            tasks.append(asyncio.create_task(self._stream(exchange, venue, "trade"), name=f"trades-{venue}"))
        self._streams[venue] = tasks
        self._stream_seen[venue] = time.monotonic()
        for _ in range(3):  # let the watchers reach their subscriptions
            await asyncio.sleep(0)

    async def _stream(self, exchange: Any, venue: str, kind: str) -> None:
        backoff = 0.1
        while True:
            try:
                # (converted inside the try: an item that cannot be read counts as a stream failure, so
                # polling takes over, rather than ending the watcher)
                items: list[VenueOrder] | list[VenueTrade] = (
                    await watch_orders(exchange) if kind == "order" else await watch_my_trades(exchange)
                )
                backoff = 0.1
                self._stream_seen[venue] = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke; polling covers the gap
                self._stream_broken[venue] = time.monotonic()
                log.warning("venue_stream_error", venue=venue, kind=kind, error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for item in items:
                self.stats["stream_events"] += 1
                self._dispatch(venue, kind, item)

    def _dispatch(self, venue: str, kind: str, item: VenueOrder | VenueTrade) -> None:
        assert self._services is not None
        if isinstance(item, VenueOrder):
            order_id, cid = str(item.id), item.client_order_id
        else:
            order_id, cid = str(item.order_id), None
        target = self._routes.get((venue, "#" + order_id)) or (cid and self._routes.get((venue, cid)))
        if not target:
            self._keep_orphan(venue, order_id, kind, item)
            return
        intent_id, partition = target

        async def apply(ctx: IntentContext[ReconcilerState]) -> None:
            state = ctx.state
            if state is None:
                return
            watched = _find(state, order_id, cid)
            if watched is None:
                return
            self._quiet.pop(watched.client_order_id, None)  # the order moves: poll it soon again
            if isinstance(item, VenueOrder):
                watched.order_id = watched.order_id or order_id
                self._route(venue, watched.client_order_id, order_id, ctx)
                await self._replay_orphans(state, watched, ctx)
                await self._apply_order(state, watched, item, ctx)
            else:
                await self._apply_event_trade(state, watched, item, ctx)
            self._commit(state, ctx)

        self._services.run_for_intent(intent_id, partition, apply)

    def _keep_orphan(self, venue: str, order_id: str, kind: str, item: VenueOrder | VenueTrade) -> None:
        """An event for an order we do not know yet (its OrderPlaced is still on the way) or that another
        replica watches. Kept briefly so the first case loses nothing."""
        now = time.monotonic()
        self._orphans.setdefault((venue, order_id), []).append((now, kind, item))
        while len(self._orphans) > ORPHAN_LIMIT:
            self._orphans.popitem(last=False)
        while self._orphans:
            key, events = next(iter(self._orphans.items()))
            if now - events[0][0] < ORPHAN_TTL_S:
                break
            self._orphans.pop(key)

    async def _replay_orphans(self, state: ReconcilerState, watched: Watched, ctx: IntentContext[ReconcilerState]) -> None:
        if watched.order_id is None:
            return
        for _at, _kind, item in self._orphans.pop((state.venue, watched.order_id), []):
            if isinstance(item, VenueTrade):
                await self._apply_event_trade(state, watched, item, ctx)
            else:
                await self._apply_order(state, watched, item, ctx)


def _content_key(trade: VenueTrade, order_id: str | None) -> str:
    """The id prefix of a trade the venue gave no id: a digest of what identifies it (order, time, price,
    amount); the occurrence index among identical trades of the order, in the venue's order, follows."""
    price = trade.exact_price
    qty = trade.exact_amount
    key = "|".join((
        str(order_id if order_id is not None else trade.order_id),
        str(trade.timestamp),
        "" if price is None else format(price.normalize(), "f"),
        "" if qty is None else format(qty.normalize(), "f"),
    ))
    return "noid-" + hashlib.sha256(key.encode()).hexdigest()[:20] + "-"


def with_trade_ids(trades: list[VenueTrade], order_id: str | None) -> list[tuple[VenueTrade, str | None]]:
    """Each trade of one order (as the venue lists them) with its id: the venue's, or for a trade without
    one `_content_key` plus its occurrence index among identical trades, so the same list always gives
    the same ids and distinct trades never share one."""
    seen: dict[str, int] = {}
    out: list[tuple[VenueTrade, str | None]] = []
    for trade in trades:
        if trade.id is not None:
            out.append((trade, trade.id))
            continue
        prefix = _content_key(trade, order_id)
        n = seen.get(prefix, 0)
        seen[prefix] = n + 1
        out.append((trade, f"{prefix}{n}"))
    return out


def _find(state: ReconcilerState, order_id: str, cid: str | None) -> Watched | None:
    if cid and cid in state.orders:
        return state.orders[cid]
    return next((w for w in state.orders.values() if w.order_id == order_id), None)
