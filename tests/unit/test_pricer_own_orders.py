"""The pricer's view of our own resting orders, and the book less them."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from messages import PriceQuoted
from tests.helpers import wait_until
from venues.types import VenueOrder, order_from_ccxt

D = Decimal


def _order(oid: str, status: str = "open", *, side: str = "buy", price: str = "100", amount: str = "1",
           filled: str = "0", ts: int = 1) -> VenueOrder:
    return order_from_ccxt({"id": oid, "symbol": "BTC/USDT", "status": status, "side": side, "price": float(price),
                            "amount": float(amount), "filled": float(filled), "lastUpdateTimestamp": ts,
                            "info": {"price": price, "origQty": amount, "executedQty": filled}})


def test_the_book_less_our_quantity_drops_levels_that_were_only_ours() -> None:
    from actors.pricer import without_own

    bids = [(D("100.02"), D("0.01")), (D("100.01"), D("0.5")), (D("100"), D("2"))]
    assert without_own(bids, {D("100.02"): D("0.01"), D("100"): D("0.5")}) == [(D("100.01"), D("0.5")), (D("100"), D("1.5"))]
    assert without_own(bids, {}) is bids


def test_own_orders_follow_fills_and_ends_and_a_late_list_cannot_revive_an_ended_one() -> None:
    from actors.pricer import OwnOrders

    own = OwnOrders("BTC/USDT")
    own.replace([_order("1"), _order("2", side="sell", price="101", amount="2")], fetched_ns=0)
    assert own.levels("buy") == {D("100"): D("1")} and own.levels("sell") == {D("101"): D("2")}
    own.apply(_order("1", filled="0.4", ts=2))  # partly filled: the rest still rests
    assert own.levels("buy") == {D("100"): D("0.6")}
    own.apply(_order("1", "canceled", filled="0.4", ts=3))
    assert own.levels("buy") == {}
    own.replace([_order("1"), _order("2", side="sell", price="101", amount="2")], fetched_ns=10**10)  # stale list
    assert own.levels("buy") == {}
    own.apply(_order("2", side="sell", price="101", amount="2", filled="2", ts=0))  # older than the one held
    assert own.levels("sell") == {D("101"): D("2")}


def test_an_order_the_stream_just_announced_survives_a_list_that_does_not_show_it_yet() -> None:
    import time

    from actors.pricer import OwnOrders

    own = OwnOrders("BTC/USDT")
    own.apply(_order("3", price="99"))
    own.replace([], fetched_ns=time.monotonic_ns())  # venues list fresh orders late
    assert own.levels("buy") == {D("99"): D("1")}
    own.replace([], fetched_ns=time.monotonic_ns() + 2 * OwnOrders.LIST_LAG_NS)
    assert own.levels("buy") == {}


# -- the pricer with a paper venue: how often it lists the open orders ------------------------------------

class _Pool:
    """The one venue the pricer asks for, its `fetch_open_orders` counted and, when `hold` is clear, held."""

    def __init__(self, exchange: Any) -> None:
        self.exchange = exchange
        self.lists = 0
        self.hold = asyncio.Event()
        self.hold.set()
        listing = exchange.fetch_open_orders

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.lists += 1
            await asyncio.sleep(0)  # (a venue across a network answers later, never within the call)
            await self.hold.wait()
            return await listing(*args, **kwargs)

        exchange.fetch_open_orders = counted

    def known(self, venue: str) -> bool:
        return venue == "paper"

    async def get(self, venue: str) -> Any:
        return self.exchange


async def _quotes(pricer: Any, kit: Any, n: int, start: int) -> list[Any]:
    """`n` quotes at once, as a pricer replica takes a batch of requests."""
    from messages import PriceRequested

    requests = [PriceRequested(intent_id=f"q{start + i}", venue="paper", symbol="BTC/USDT", attempt=1, side="buy",
                               mode="touch", qty=D("0.001")) for i in range(n)]
    await asyncio.gather(*(pricer.handle(r, kit.context(r.intent_id)) for r in requests))
    return [kit.of(PriceQuoted, r.intent_id)[-1] for r in requests]


async def test_many_quotes_at_once_list_the_open_orders_once_and_a_due_refresh_runs_behind_them() -> None:
    """With thousands of orders resting, each quote listing them itself was seconds of work for sixty-four
    quotes at once. Before the first list, the quotes wait for one list together; later, a refresh that is
    due (the stream's safety net) runs in the background and no quote waits for it."""
    from actors.pricer import Pricer
    from tests.actors.kit import ActorKit
    from venues.paper import PaperExchange
    from venues.config import PaperVenueConfig
    from venues.simulator import PaperVenue

    exchange = PaperExchange({"options": {"engine": PaperVenue(PaperVenueConfig(speed=0))}})  # (binance's ways)
    await exchange.load_markets()
    try:
        book = await exchange.fetch_order_book("BTC/USDT", 5)
        best_bid = Decimal(str(book["bids"][0][0]))
        ours = await exchange.create_order("BTC/USDT", "limit", "buy", 0.01, float(best_bid - D("1")))

        async def listed() -> bool:  # (like Binance, the venue lists a fresh order only after a while)
            return any(o["id"] == ours["id"] for o in await exchange.fetch_open_orders("BTC/USDT"))

        await wait_until(listed)
        pool = _Pool(exchange)
        pricer = Pricer(pool)
        kit = await ActorKit(pricer).start()

        first = await _quotes(pricer, kit, 32, 0)
        assert pool.lists == 1 and len(first) == 32
        own = pricer._own[("paper", "BTC/USDT")]
        assert set(own.open) == {str(ours["id"])}  # (what every quote took out of the book)

        pricer._own_max_age_ns = 0  # a refresh is due from now on
        pool.hold.clear()  # and the list will not come back until the quotes are done
        seeded = own.seeded_ns
        later = await asyncio.wait_for(_quotes(pricer, kit, 32, 100), 10)  # (quotes that waited: never)
        assert pool.lists == 2 and len(later) == 32 and own.seeded_ns == seeded  # (none waited for the list)
        pool.hold.set()
        await pricer._own_refreshes[("paper", "BTC/USDT")]
        assert own.seeded_ns is not None and seeded is not None and own.seeded_ns > seeded
        assert set(own.open) == {str(ours["id"])}

        # A stream silent for longer than the refresh interval may be dead without saying so: then the
        # quotes wait for a list, one list for all of them.
        pricer._own_refresh_ns = 0
        pool.hold.clear()
        waiting = asyncio.ensure_future(_quotes(pricer, kit, 32, 200))
        await wait_until(lambda: pool.lists == 3)
        assert not waiting.done()
        pool.hold.set()
        assert len(await asyncio.wait_for(waiting, 10)) == 32 and pool.lists == 3
        await pricer.stop()
    finally:
        await exchange.close()
