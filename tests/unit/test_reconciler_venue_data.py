"""The reconciler against venue data that is less tidy than the paper venue's defaults: trades without
ids, venues without fetchOrderTrades whose trade history is paged, and trades that never show up.

A scripted ccxt-shaped venue stands in for the exchange, so each case is exact and needs no server (the
same cases run end to end against the paper venue in tests/e2e/test_venue_quirks.py)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import structlog

from actors.reconciler import NS, Reconciler, ReconcilerState, Watched
from bus.actor import IntentContext
from bus.clock import SimClock
from messages import OrderFilled, OrderFinalized
from venues.types import trade_from_ccxt

T0 = 1_700_000_000_000  # venue ms


def trade(order: str, ts: int, price: str, qty: str, tid: str | None = None, fee: str = "0.001", cur: str = "USDT") -> dict[str, Any]:
    return {"id": tid, "order": order, "timestamp": ts, "price": float(price), "amount": float(qty),
            "info": {"price": price, "qty": qty}, "fee": {"cost": float(fee), "currency": cur}}


def order(oid: str, filled: str, *, status: str = "closed", created: int = T0, updated: int = T0 + 50,
          average: str | None = "100", fee: str | None = None) -> dict[str, Any]:
    return {"id": oid, "clientOrderId": "i-1-1", "status": status, "filled": float(filled), "amount": 10.0,
            "timestamp": created, "lastUpdateTimestamp": updated, "average": float(average) if average else None,
            "price": None, "fee": {"cost": float(fee), "currency": "USDT"} if fee else None}


class Venue:
    """ccxt-shaped: fetch_order answers `self.order`; trades come from `self.trades` (oldest first)."""

    def __init__(self, trades: list[dict[str, Any]], *, order_trades: bool, page_cap: int = 1000) -> None:
        self.trades = trades
        self.order: dict[str, Any] = {}
        self.page_cap = page_cap
        self.has = {"fetchMyTrades": True, "fetchOrderTrades": order_trades, "watchOrders": False}
        self.my_trades_calls: list[tuple[int | None, int | None]] = []

    async def fetch_order(self, oid: str, symbol: str) -> dict[str, Any]:
        return self.order

    async def fetch_order_trades(self, oid: str, symbol: str) -> list[dict[str, Any]]:
        return [t for t in self.trades if t["order"] == oid]

    async def fetch_my_trades(self, symbol: str, since: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Binance-like: one page of at most `page_cap`; from `since` if given, else the newest."""
        self.my_trades_calls.append((since, limit))
        n = min(limit or self.page_cap, self.page_cap)
        if since is None:
            return self.trades[-n:]
        return [t for t in self.trades if t["timestamp"] >= since][:n]


class Pool:
    def __init__(self, venue: Venue) -> None:
        self.venue = venue

    async def get(self, name: str) -> Venue:
        return self.venue


class Harness:
    """One intent's reconciler state, driven step by step, with everything it publishes."""

    def __init__(self, venue: Venue, **options: Any) -> None:
        self.reconciler = Reconciler(Pool(venue), use_streams=False, **options)
        self.clock = SimClock(1_000 * NS)
        self.published: list[Any] = []
        self.state = ReconcilerState(venue="paper", symbol="BTC/USDT", orders={
            "i-1-1": Watched(client_order_id="i-1-1", attempt=1, side="buy", order_id="7"),
        })

    def ctx(self) -> IntentContext[ReconcilerState]:
        async def send(msg: Any, *_: Any) -> asyncio.Future[None]:
            self.published.append(msg)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        return IntentContext("i-1", 0, self.state, send, self.clock, structlog.get_logger())

    async def poll(self) -> None:
        await self.reconciler.on_timer(self.ctx())

    @property
    def fills(self) -> list[OrderFilled]:
        return [m for m in self.published if isinstance(m, OrderFilled)]

    @property
    def finals(self) -> list[OrderFinalized]:
        return [m for m in self.published if isinstance(m, OrderFinalized)]


# -- trades without ids -------------------------------------------------------------------------------


def test_ids_from_content_are_stable_and_never_merge_distinct_trades() -> None:
    from actors.reconciler import with_trade_ids

    a = trade("7", T0, "100", "1")
    twin = trade("7", T0, "100", "1")  # the same content twice: two trades all the same
    other = trade("7", T0 + 1, "100", "1")
    typed = [trade_from_ccxt(t) for t in (a, twin, other)]
    ids = [i for _, i in with_trade_ids(typed, "7")]
    assert len(set(ids)) == 3
    assert ids == [i for _, i in with_trade_ids([trade_from_ccxt(dict(t)) for t in (a, twin, other)], "7")]  # deterministic
    assert [i for _, i in with_trade_ids(typed[:2], "7")] == ids[:2]  # a longer list keeps the first ids
    assert with_trade_ids([trade_from_ccxt(trade("7", T0, "100", "1", tid="55"))], "7")[0][1] == "55"  # the venue's id wins


async def test_trades_without_ids_each_become_one_fill_and_a_repeat_poll_adds_none() -> None:
    venue = Venue([trade("7", T0, "100", "1"), trade("7", T0, "100", "1"), trade("7", T0 + 5, "101", "0.5")],
                  order_trades=True)
    venue.order = order("7", "2.5")
    h = Harness(venue)

    await h.poll()
    await h.poll()

    assert [f.qty for f in h.fills] == [Decimal("1"), Decimal("1"), Decimal("0.5")]
    assert len({f.trade_id for f in h.fills}) == 3
    (final,) = h.finals
    assert final.filled_qty == Decimal("2.5") and final.status == "filled" and final.reason == ""


async def test_a_stream_trade_without_id_and_the_same_trade_polled_later_are_one_fill() -> None:
    venue = Venue([trade("7", T0, "100", "1"), trade("7", T0, "100", "1")], order_trades=True)
    venue.order = order("7", "2", status="open")
    h = Harness(venue)
    watched = h.state.orders["i-1-1"]
    ctx = h.ctx()

    await h.reconciler._apply_event_trade(h.state, watched, trade_from_ccxt(trade("7", T0, "100", "1")), ctx)  # the first
    assert len(h.fills) == 1
    # its identical twin on the stream cannot be told from a repeat: the order's trade list decides
    await h.reconciler._apply_event_trade(h.state, watched, trade_from_ccxt(trade("7", T0, "100", "1")), ctx)
    await h.poll()

    assert [f.qty for f in h.fills] == [Decimal("1"), Decimal("1")]
    assert len({f.trade_id for f in h.fills}) == 2


# -- venues without fetchOrderTrades -------------------------------------------------------------------


async def test_without_fetch_order_trades_the_history_is_read_in_the_orders_time_window() -> None:
    # Ours: 4 trades at T0+10..T0+13; after them 30 trades of other orders push them off the newest page.
    ours = [trade("7", T0 + 10 + i, "100", "0.25") for i in range(4)]
    earlier = [trade("1", T0 - 5_000 + i, "99", "1") for i in range(30)]
    later = [trade("9", T0 + 1_000 + i, "99", "1") for i in range(30)]
    venue = Venue(earlier + ours + later, order_trades=False, page_cap=3)
    venue.order = order("7", "1", updated=T0 + 13)
    h = Harness(venue, trades_page_limit=3, trades_since_margin_ms=1_000)

    await h.poll()

    assert sum(f.qty for f in h.fills) == Decimal("1") and len(h.fills) == 4
    (final,) = h.finals
    assert final.filled_qty == Decimal("1") and final.reason == ""
    sinces = [s for s, _ in venue.my_trades_calls]
    assert sinces[0] == T0 - 1_000  # from the order's creation less the margin, never the whole history
    assert all(limit == 3 for _, limit in venue.my_trades_calls)
    assert len(venue.my_trades_calls) <= 5  # paged forward, stopping past the order's last update


async def test_trades_that_never_show_up_are_booked_after_a_bounded_wait_with_the_reason() -> None:
    # The venue says 2 filled; its history only ever shows one of the two trades.
    venue = Venue([trade("7", T0 + 10, "100", "1", tid="a")], order_trades=False)
    venue.order = order("7", "2", average="101", fee="0.5")
    h = Harness(venue, trade_wait_tries=3, trade_wait_s=2.0)

    for _ in range(3):
        await h.poll()
        h.clock.advance_to(h.clock.now_ns() + NS // 2)
    assert h.finals == []  # not yet: 3 looks but only 1 s
    for _ in range(3):
        await h.poll()
        h.clock.advance_to(h.clock.now_ns() + NS // 2)

    (final,) = h.finals
    assert final.filled_qty == Decimal("2") and final.status == "filled"
    assert "trades missing" in final.reason and "1 filled" not in final.reason
    real, gap = h.fills
    assert real.trade_id == "a" and gap.qty == Decimal("1")
    assert gap.price == Decimal("102")  # 2 @ 101 average, less the 1 @ 100 seen
    assert real.fee + gap.fee == Decimal("0.5")  # the rest of the order's fee goes with the gap
    assert sum(f.qty for f in h.fills) == final.filled_qty  # the report can add its fills up to the total
    await h.poll()
    assert len(h.finals) == 1 and len(h.fills) == 2


async def test_a_venue_that_answers_fewer_trades_than_asked_is_still_paged_to_the_orders_end() -> None:
    # Asked for 100 a page, the venue answers 3: a short page is not the end of the order's window.
    ours = [trade("7", T0 + 10 * i, "100", "0.125") for i in range(8)]
    others = [trade("8", T0 + 10 * i + 5, "99", "1") for i in range(8)]
    venue = Venue(sorted(ours + others, key=lambda t: t["timestamp"]), order_trades=False, page_cap=3)
    venue.order = order("7", "1", updated=T0 + 70)
    h = Harness(venue)  # trades_page_limit: the default 100

    await h.poll()

    assert len(h.fills) == 8 and sum(f.qty for f in h.fills) == Decimal("1")
    (final,) = h.finals
    assert final.filled_qty == Decimal("1") and final.reason == ""
    assert len(venue.my_trades_calls) <= 8
