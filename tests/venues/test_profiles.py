"""Venue behaviour profiles: the `binance` default is as unkind as Binance spot, `strict` is the old venue.

Every behaviour is seen through real ccxt calls on a PaperExchange talking to a real nats-server. The
venue is step-driven, so exchange time (which the visibility lag and the order budget are measured on)
only moves when a test advances it: nothing here sleeps to pass time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import ccxt
import msgspec
import nats
import pytest

from bus.server import EmbeddedNats
from venues.config import PaperVenueConfig
from venues.paper import PaperExchange
from venues.profiles import ProfileSettings
from venues.service import PaperVenueService
from venues.simulator import PaperVenue

from paper_helpers import SYMBOL

FAR_BID = 50000  # rests forever in the sample recording (~61,837)


class Served:
    def __init__(self, url: str, venue: PaperVenue) -> None:
        self.url, self.venue = url, venue
        self.clients: list[PaperExchange] = []

    async def client(self, **options: object) -> PaperExchange:
        ex = PaperExchange({"options": {"natsUrl": self.url, **options}})
        await ex.load_markets()
        self.clients.append(ex)
        return ex


@asynccontextmanager
async def served(**config: object) -> AsyncIterator[Served]:
    """A real nats-server and a step-driven venue (default profile unless `config` says otherwise)."""
    venue = PaperVenue(msgspec.convert({"speed": 0, **config}, PaperVenueConfig))  # as a JSON config reads
    async with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
        s = Served(server.url, venue)
        try:
            async with PaperVenueService(nc, venue):
                yield s
        finally:
            for ex in s.clients:
                await ex.close()
            await nc.drain()


async def advance(ex: PaperExchange, seconds: float) -> None:
    await ex.paper_control("advance", {"seconds": seconds})


async def rest(ex: PaperExchange, coid: str, price: float = FAR_BID) -> dict:
    return await ex.create_order(SYMBOL, "limit", "buy", 0.01, price, {"clientOrderId": coid})


# ----------------------------------------------------------------------------- defaults
def test_the_default_profile_is_binance_with_its_lag_and_order_budget() -> None:
    cfg = PaperVenueConfig()
    assert cfg.profile == "binance"
    s = ProfileSettings.from_config(cfg)
    assert (s.visibility_lag_ms, s.order_rate_limit, s.order_rate_window_s) == (300.0, 100, 10.0)
    strict = ProfileSettings.from_config(PaperVenueConfig(profile="strict"))
    assert (strict.visibility_lag_ms, strict.order_rate_limit, strict.reuse_closed_client_ids) == (0.0, None, False)


# ----------------------------------------------------------------------------- client order ids
async def test_binance_refuses_the_client_order_id_of_an_open_order_as_binance_does() -> None:
    async with served() as s:
        ex = await s.client()
        await rest(ex, "dup-1")
        with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent") as info:
            await rest(ex, "dup-1")
        assert type(info.value) is ccxt.InvalidOrder  # ccxt's binance maps -2010 to InvalidOrder, not DuplicateOrderId
        assert len(await advance_and_list(ex)) == 1


async def advance_and_list(ex: PaperExchange) -> list[dict]:
    await advance(ex, 0.3)  # past the visibility lag
    return await ex.fetch_open_orders(SYMBOL)


async def test_binance_accepts_the_client_order_id_of_a_closed_order_as_a_new_order() -> None:
    async with served() as s:
        ex = await s.client()
        first = await ex.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "again"})
        assert first["status"] == "closed"
        second = await ex.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "again"})
        assert second["id"] != first["id"] and second["filled"] == 0.01
        canceled = await rest(ex, "again")
        await advance(ex, 0.3)
        await ex.cancel_order(canceled["id"], SYMBOL)
        third = await rest(ex, "again")
        await advance(ex, 0.3)
        assert (await ex.fetch_order(None, SYMBOL, {"clientOrderId": "again"}))["id"] == third["id"]  # the newest
        assert [o["client_order_id"] for o in (await ex.paper_control("audit"))["accepted"]] == ["again"] * 4


async def test_strict_refuses_every_reused_client_order_id() -> None:
    async with served(profile="strict") as s:
        ex = await s.client()
        await ex.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "once"})
        with pytest.raises(ccxt.DuplicateOrderId):
            await ex.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "once"})


# ----------------------------------------------------------------------------- visibility lag
async def test_a_new_order_is_unknown_to_lookups_and_cancel_until_the_lag_has_passed() -> None:
    async with served() as s:
        ex = await s.client()
        order = await rest(ex, "lag-1")
        assert order["status"] == "open"  # the create itself answers at once
        with pytest.raises(ccxt.OrderNotFound):
            await ex.fetch_order(order["id"], SYMBOL)
        with pytest.raises(ccxt.OrderNotFound):
            await ex.fetch_order(None, SYMBOL, {"clientOrderId": "lag-1"})
        with pytest.raises(ccxt.OrderNotFound, match="Unknown order sent"):
            await ex.cancel_order(order["id"], SYMBOL)
        assert await ex.fetch_open_orders(SYMBOL) == []
        await advance(ex, 0.3)  # the lag is at most visibility_lag_ms (300) of exchange time
        assert (await ex.fetch_order(order["id"], SYMBOL))["status"] == "open"
        assert [o["id"] for o in await ex.fetch_open_orders(SYMBOL)] == [order["id"]]
        assert (await ex.cancel_order(order["id"], SYMBOL))["status"] == "canceled"


async def test_a_venue_clock_nobody_advances_still_shows_a_new_order_after_a_bounded_wall_time() -> None:
    """A step-driven venue whose market a test keeps frozen: without a bound on the wall clock, a new order
    would stay unknown to every lookup and cancel for ever, which no real venue does."""
    from tests.helpers import wait_until
    from venues.profiles import WALL_BOUND_S

    async with served() as s:
        ex = await s.client()
        order = await rest(ex, "frozen-1")
        with pytest.raises(ccxt.OrderNotFound):
            await ex.fetch_order(order["id"], SYMBOL)
        started = asyncio.get_running_loop().time()

        async def visible() -> bool:
            try:
                return (await ex.fetch_order(order["id"], SYMBOL))["status"] == "open"
            except ccxt.OrderNotFound:
                return False

        await wait_until(visible, timeout=5 * WALL_BOUND_S, interval=0.05)
        assert asyncio.get_running_loop().time() - started <= 5 * WALL_BOUND_S
        assert (await ex.cancel_order(order["id"], SYMBOL))["status"] == "canceled"


async def visibility_steps(seed: int) -> dict[str, int]:
    """When (in 100 ms steps of exchange time) each of 20 fresh orders first shows in fetch_open_orders."""
    async with served(visibility_lag_ms=1000, seed=seed) as s:
        ex = await s.client()
        orders = [await rest(ex, f"u-{i}") for i in range(20)]
        seen_at: dict[str, int] = {}
        for step in range(1, 11):
            await advance(ex, 0.1)
            for o in await ex.fetch_open_orders(SYMBOL):
                seen_at.setdefault(o["clientOrderId"], step)
        assert set(seen_at) == {o["clientOrderId"] for o in orders}  # all visible once the full lag passed
        return seen_at


async def test_the_lag_is_seeded_and_uniform_over_the_window() -> None:
    first = await visibility_steps(seed=0)
    assert len(set(first.values())) >= 4  # spread over the window, not one fixed delay
    assert await visibility_steps(seed=0) == first  # the same seed: the same lags
    assert await visibility_steps(seed=1) != first


async def test_the_lag_does_not_delay_fills_or_streams() -> None:
    async with served() as s:
        ex = await s.client()
        watch = asyncio.create_task(ex.watch_orders(SYMBOL))
        while not ex._streams:
            await asyncio.sleep(0.005)
        filled = await ex.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "fast"})
        assert filled["status"] == "closed"  # matched at once
        assert [o["clientOrderId"] for o in await asyncio.wait_for(watch, 5)] == ["fast"]  # streamed at once
        assert len(await ex.fetch_my_trades(SYMBOL)) == 1  # and the trade is listed
        with pytest.raises(ccxt.OrderNotFound):
            await ex.fetch_order(filled["id"], SYMBOL)  # while the order itself is still unknown


# ----------------------------------------------------------------------------- order budget
def retry_after_ms(exc: BaseException) -> int:
    m = re.search(r" retry_after_ms=(\d+)$", str(exc))
    assert m, str(exc)
    return int(m.group(1))


async def test_orders_beyond_binance_budget_of_100_per_10s_are_refused_and_execute_nothing() -> None:
    async with served() as s:
        ex = await s.client()
        for i in range(100):
            await rest(ex, f"b-{i}")
        with pytest.raises(ccxt.RateLimitExceeded) as info:
            await ex.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "over"})
        assert retry_after_ms(info.value) == 10_000  # all 100 at one exchange instant
        audit = await ex.paper_control("audit")
        assert len(audit["accepted"]) == 100 and audit["refused"] == {"RateLimitExceeded": 1}
        assert await ex.fetch_my_trades(SYMBOL) == []  # the refused market order executed nothing
        other = await s.client(account="other")  # the budget is per account
        await rest(other, "o-1")


async def test_retry_after_says_exactly_when_the_budget_has_room() -> None:
    async with served(order_rate_limit=3, order_rate_window_s=2.0) as s:
        ex = await s.client()
        for i in range(3):
            await rest(ex, f"r-{i}")
            await advance(ex, 0.5)
        with pytest.raises(ccxt.RateLimitExceeded) as info:
            await rest(ex, "r-3")
        wait = retry_after_ms(info.value)
        assert wait == 500  # the first order (t=0) leaves the 2 s window at t=2.0; now is t=1.5
        await advance(ex, (wait - 1) / 1000)
        with pytest.raises(ccxt.RateLimitExceeded) as info:
            await rest(ex, "r-3")
        assert retry_after_ms(info.value) == 1
        await advance(ex, 0.001)
        assert (await rest(ex, "r-3"))["clientOrderId"] == "r-3"


async def test_strict_has_no_order_budget_and_the_profile_can_change_at_run_time() -> None:
    async with served(profile="strict") as s:
        ex = await s.client()
        for i in range(120):
            await rest(ex, f"s-{i}")
        await ex.paper_control("profile", {"profile": "binance", "order_rate_limit": 2})
        await rest(ex, "p-1")
        await rest(ex, "p-2")
        with pytest.raises(ccxt.RateLimitExceeded):
            await rest(ex, "p-3")


# ----------------------------------------------------------------------------- quirks
async def test_market_buy_requires_price_spends_a_quote_budget_walking_the_book() -> None:
    async with served(profile="strict") as s:
        ex = await s.client()
        assert ex.options["createMarketBuyOrderRequiresPrice"] is False
        await ex.create_order(SYMBOL, "market", "buy", 0.01)  # fine while the quirk is off
        await ex.paper_control("quirks", {"market_buy_requires_price": True})
        assert ex.options["createMarketBuyOrderRequiresPrice"] is True
        assert (await s.client()).options["createMarketBuyOrderRequiresPrice"] is True  # others see it on load
        with pytest.raises(ccxt.InvalidOrder, match="createMarketBuyOrderRequiresPrice"):
            await ex.create_order(SYMBOL, "market", "buy", 0.01)
        book = await ex.fetch_order_book(SYMBOL)
        ask = book["asks"][0][0]
        assert book["asks"][0][1] < 3  # so 3 BTC walks past the best level
        walked = await ex.create_order(SYMBOL, "market", "buy", 3, ask)
        budget = Decimal("3") * Decimal(str(ask))
        assert Decimal(walked["info"]["cummulativeQuoteQty"]) <= budget
        assert 2.99 < walked["filled"] < 3  # the average is above the best ask: less than asked for
        assert Decimal(walked["info"]["executedQty"]) % Decimal("0.00001") == 0
        over = await ex.create_order(SYMBOL, "market", "buy", 0.1, round(ask * 1.01, 2))
        assert over["filled"] > 0.1  # a price above the average buys more than `amount`
        by_cost = await ex.create_order(SYMBOL, "market", "buy", 0.1, None, {"cost": 1000})
        assert Decimal(by_cost["info"]["cummulativeQuoteQty"]) <= 1000 and by_cost["filled"] > 0.016
        sold = await ex.create_order(SYMBOL, "market", "sell", 0.01)  # sells are unaffected
        assert sold["filled"] == 0.01


async def test_fees_in_a_third_currency() -> None:
    async with served(profile="strict", quirks={"fee_currency": "BNB", "fee_currency_price": "500"}) as s:
        ex = await s.client()
        before = await ex.fetch_balance()
        assert before["total"]["BNB"] == 1_000_000  # the fee currency is funded
        order = await ex.create_order(SYMBOL, "market", "buy", 0.1)
        trade = (await ex.fetch_my_trades(SYMBOL))[0]
        assert trade["fee"]["currency"] == "BNB" and order["fee"]["currency"] == "BNB"
        cost = Decimal(trade["info"]["quoteQty"])
        assert Decimal(trade["info"]["commission"]) == cost * Decimal("0.001") / 500
        after = await ex.fetch_balance()
        assert after["total"]["BTC"] == before["total"]["BTC"] + 0.1  # nothing taken from what we received
        assert Decimal(str(after["total"]["BNB"])) == Decimal(1_000_000) - Decimal(trade["info"]["commission"])
        await ex.paper_control("quirks", {"fee_currency": None})
        await ex.create_order(SYMBOL, "market", "buy", 0.1)
        assert (await ex.fetch_my_trades(SYMBOL))[-1]["fee"]["currency"] == "BTC"


async def test_trades_without_ids_everywhere() -> None:
    async with served(profile="strict") as s:
        ex = await s.client()
        first = await ex.create_order(SYMBOL, "market", "buy", 0.01)
        assert all(t["id"] is not None for t in await ex.fetch_my_trades(SYMBOL))
        await ex.paper_control("quirks", {"trades_without_ids": True})
        watch = asyncio.create_task(ex.watch_my_trades(SYMBOL))
        while not ex._streams:
            await asyncio.sleep(0.005)
        second = await ex.create_order(SYMBOL, "market", "buy", 0.01)
        streamed = await asyncio.wait_for(watch, 5)
        assert streamed and all(t["id"] is None for t in streamed)
        assert all(t["id"] is None for t in await ex.fetch_my_trades(SYMBOL))
        assert all(t["id"] is None for t in await ex.fetch_order_trades(first["id"], SYMBOL))
        assert all(t["id"] is None for t in second["trades"])


async def test_without_fetch_order_trades_my_trades_answers_one_bounded_page() -> None:
    async with served(profile="strict", quirks={"fetch_order_trades": False, "my_trades_page_limit": 3}) as s:
        ex = await s.client()
        assert ex.has["fetchOrderTrades"] is False
        orders = []
        for _ in range(5):
            orders.append(await ex.create_order(SYMBOL, "market", "buy", 0.01))
            await advance(ex, 0.01)
        with pytest.raises(ccxt.NotSupported):
            await ex.fetch_order_trades(orders[0]["id"], SYMBOL)
        everything = [t for o in orders for t in o["trades"]]
        assert len(everything) == 5
        assert [t["id"] for t in await ex.fetch_my_trades(SYMBOL)] == [t["id"] for t in everything[-3:]]
        since = everything[0]["timestamp"]
        assert [t["id"] for t in await ex.fetch_my_trades(SYMBOL, since)] == [t["id"] for t in everything[:3]]
        assert len(await ex.fetch_my_trades(SYMBOL, since, 2)) == 2
        assert len(await ex.fetch_my_trades(SYMBOL, since, 1000)) == 3  # the cap holds whatever limit says
        await ex.paper_control("quirks", {"fetch_order_trades": True})
        assert ex.has["fetchOrderTrades"] is True and len(await ex.fetch_my_trades(SYMBOL)) == 5


async def test_silent_streams_deliver_nothing_and_raise_nothing() -> None:
    async with served(profile="strict") as s:
        ex = await s.client()
        orders = asyncio.create_task(ex.watch_orders(SYMBOL))
        trades = asyncio.create_task(ex.watch_my_trades(SYMBOL))
        while len(ex._streams) < 2:
            await asyncio.sleep(0.005)
        await ex.paper_control("quirks", {"silent_streams": True})
        await ex.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "unheard"})
        await advance(ex, 1.0)
        assert (await ex.fetch_order(None, SYMBOL, {"clientOrderId": "unheard"}))["status"] == "closed"
        await ex.paper_control("quirks", {"silent_streams": False})
        await ex.create_order(SYMBOL, "market", "buy", 0.01, None, {"clientOrderId": "heard"})
        # the first events the watchers get are the second order's: the first order's never came
        assert {o["clientOrderId"] for o in await asyncio.wait_for(orders, 5)} == {"heard"}
        heard = await ex.fetch_order(None, SYMBOL, {"clientOrderId": "heard"})
        assert {t["order"] for t in await asyncio.wait_for(trades, 5)} == {heard["id"]}


async def test_unknown_quirks_are_refused() -> None:
    async with served(profile="strict") as s:
        ex = await s.client()
        with pytest.raises(ccxt.BadRequest):
            await ex.paper_control("quirks", {"no_such_quirk": True})


# ----------------------------------------------------------------------------- funding
async def test_every_market_currency_and_the_fee_currency_is_funded_and_balances_override() -> None:
    markets = [{}, {"synthetic": {"symbol": "ETH/EUR", "start_price": "3000"}}]
    async with served(markets=markets, balances={"EUR": "7"}, quirks={"fee_currency": "BNB"}) as s:
        ex = await s.client()
        total = (await ex.fetch_balance())["total"]
        assert (total["BTC"], total["USDT"], total["ETH"], total["EUR"], total["BNB"]) == (
            100, 10_000_000, 100, 7, 1_000_000)
        other = await s.client(account="fresh")
        assert (await other.fetch_balance())["total"]["ETH"] == 100


def test_config_round_trips_with_profile_and_quirks() -> None:
    cfg = msgspec.convert({"profile": "strict", "quirks": {"fee_currency": "BNB", "fee_currency_price": "612.5"}},
                          PaperVenueConfig)
    assert cfg.profile == "strict" and cfg.quirks.fee_currency_price == Decimal("612.5")
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"profile": "kraken"}, PaperVenueConfig)
