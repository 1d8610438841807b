"""Each fault, seen by a ccxt caller over NATS exactly as from a live venue: same exception classes,
same eventual state. Rules are scoped by clientOrderId prefix, so they only hit the orders meant."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import ccxt
import pytest

from venues.config import FaultRule, LatencyConfig
from venues.paper import PaperExchange
from venues.simulator import PaperVenue

from paper_helpers import SYMBOL, RunningVenue, check_order, stepped


async def client_with_faults(venue: RunningVenue, *rules: dict) -> PaperExchange:
    ex = venue.client()
    await ex.load_markets()
    await ex.paper_control("faults_set", {"rules": list(rules)})
    return ex


async def best_bid(ex: PaperExchange) -> float:
    return (await ex.fetch_order_book(SYMBOL))["bids"][0][0]


async def test_rate_limit_refuses_the_request_and_nothing_is_placed(nats_venue: RunningVenue) -> None:
    ex = await client_with_faults(nats_venue, {"kind": "rate_limit", "client_order_id_prefix": "rl-", "count": 1})
    with pytest.raises(ccxt.RateLimitExceeded):
        await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "rl-1"})
    with pytest.raises(ccxt.OrderNotFound):
        await ex.fetch_order(None, SYMBOL, {"clientOrderId": "rl-1"})
    other = await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "other-1"})
    assert other["status"] == "open"  # out of scope
    retry = await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "rl-1"})
    assert retry["clientOrderId"] == "rl-1"  # count spent: the retry goes through
    await ex.close()


@pytest.mark.parametrize(("kind", "error"), [("network_error", ccxt.NetworkError),
                                             ("request_timeout", ccxt.RequestTimeout)])
async def test_a_lost_response_leaves_the_order_placed_and_the_client_order_id_resolves_it(
        nats_venue: RunningVenue, kind: str, error: type) -> None:
    ex = await client_with_faults(nats_venue, {"kind": kind, "client_order_id_prefix": "lost-"})
    with pytest.raises(error):
        await ex.create_order(SYMBOL, "market", "buy", 0.1, None, {"clientOrderId": "lost-1"})
    found = await ex.fetch_order(None, SYMBOL, {"clientOrderId": "lost-1"})  # how execbus resolves it
    check_order(ex, found, "fetchOrder")
    assert found["status"] == "closed" and found["filled"] == 0.1
    with pytest.raises(ccxt.DuplicateOrderId):  # a blind retry can never place it twice
        await ex.create_order(SYMBOL, "market", "buy", 0.1, None, {"clientOrderId": "lost-1"})
    await ex.close()


async def test_a_fresh_order_is_not_found_for_a_while_then_appears(nats_venue: RunningVenue) -> None:
    ex = await client_with_faults(nats_venue, {"kind": "order_not_found", "client_order_id_prefix": "slow-",
                                               "duration_s": 2.0})
    order = await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "slow-1"})
    with pytest.raises(ccxt.OrderNotFound):
        await ex.fetch_order(order["id"], SYMBOL)
    with pytest.raises(ccxt.OrderNotFound):
        await ex.fetch_order(None, SYMBOL, {"clientOrderId": "slow-1"})
    with pytest.raises(ccxt.OrderNotFound):
        await ex.cancel_order(order["id"], SYMBOL)  # cancelling what the venue does not show yet fails too
    assert await ex.fetch_open_orders(SYMBOL) == []
    await ex.paper_control("advance", {"seconds": 2.5})
    assert (await ex.fetch_order(order["id"], SYMBOL))["status"] == "open"
    assert [o["id"] for o in await ex.fetch_open_orders(SYMBOL)] == [order["id"]]
    await ex.close()


async def test_dropped_order_events_never_arrive_but_the_state_is_right(nats_venue: RunningVenue) -> None:
    ex = await client_with_faults(nats_venue, {"kind": "drop_order_event", "client_order_id_prefix": "drop-"})
    watch = asyncio.create_task(ex.watch_orders(SYMBOL))
    while not ex._streams:
        await asyncio.sleep(0.005)
    dropped = await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "drop-1"})
    await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "keep-1"})
    updates = await asyncio.wait_for(watch, 5)
    assert [o["clientOrderId"] for o in updates] == ["keep-1"]
    assert (await ex.fetch_order(dropped["id"], SYMBOL))["status"] == "open"
    await ex.close()


async def test_delayed_order_events_arrive_late_and_out_of_order(nats_venue: RunningVenue) -> None:
    ex = await client_with_faults(nats_venue, {"kind": "delay_order_event", "client_order_id_prefix": "late-",
                                               "delay_s": 0.3})
    watch = asyncio.create_task(ex.watch_orders(SYMBOL))
    while not ex._streams:
        await asyncio.sleep(0.005)
    await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "late-1"})
    await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "now-1"})
    first = await asyncio.wait_for(watch, 5)
    assert [o["clientOrderId"] for o in first] == ["now-1"]
    later = await asyncio.wait_for(ex.watch_orders(SYMBOL), 5)
    assert [o["clientOrderId"] for o in later] == ["late-1"]
    await ex.close()


async def test_a_fill_lands_after_the_cancel_request(nats_venue: RunningVenue) -> None:
    ex = await client_with_faults(nats_venue, {"kind": "fill_after_cancel", "client_order_id_prefix": "race-",
                                               "fill_fraction": 0.5, "delay_s": 0.2})
    order = await ex.create_order(SYMBOL, "limit", "buy", 0.2, await best_bid(ex), {"clientOrderId": "race-1"})
    fills = asyncio.create_task(ex.watch_my_trades(SYMBOL))
    while not ex._streams:
        await asyncio.sleep(0.005)
    canceled = await ex.cancel_order(order["id"], SYMBOL)
    check_order(ex, canceled, "cancelOrder")
    assert not fills.done()  # the ack came first; the fill is still on its way
    assert canceled["status"] == "canceled" and canceled["filled"] == 0.1
    late = await asyncio.wait_for(fills, 5)
    assert [(t["order"], t["amount"], t["takerOrMaker"]) for t in late] == [(order["id"], 0.1, "maker")]
    final = await ex.fetch_order(order["id"], SYMBOL)
    assert (final["status"], final["filled"], final["remaining"]) == ("canceled", 0.1, 0.1)
    balance = await ex.fetch_balance()
    assert balance["used"]["USDT"] == 0 and Decimal(str(balance["total"]["BTC"])) == Decimal("100.0999")
    await ex.close()


async def test_a_cancel_that_loses_the_race_to_a_full_fill(nats_venue: RunningVenue) -> None:
    ex = await client_with_faults(nats_venue, {"kind": "cancel_loses_race", "client_order_id_prefix": "lose-"})
    order = await ex.create_order(SYMBOL, "limit", "sell", 0.2, 90000, {"clientOrderId": "lose-1"})
    with pytest.raises(ccxt.OrderNotFound):  # Binance: -2011 Unknown order sent
        await ex.cancel_order(order["id"], SYMBOL)
    final = await ex.fetch_order(order["id"], SYMBOL)
    check_order(ex, final, "fetchOrder")
    assert final["status"] == "closed" and final["filled"] == 0.2 and final["average"] == 90000
    assert [t["order"] for t in await ex.fetch_my_trades(SYMBOL)] == [order["id"]]
    await ex.close()


async def test_faults_can_be_cleared_by_name(nats_venue: RunningVenue) -> None:
    ex = await client_with_faults(nats_venue, {"kind": "rate_limit", "name": "storm"})
    with pytest.raises(ccxt.RateLimitExceeded):
        await ex.fetch_balance()
    assert (await ex.paper_control("faults_clear", {"name": "storm"}))["removed"] == 1
    await ex.fetch_balance()
    await ex.close()


async def test_request_latency_is_applied_in_process_too() -> None:
    venue = PaperVenue(stepped(latency=LatencyConfig(kind="fixed", mean_ms=120)))
    ex = PaperExchange({"options": {"engine": venue}})
    await ex.load_markets()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await ex.fetch_balance()
    assert loop.time() - t0 >= 0.11
    await ex.close()


async def test_probabilistic_faults_are_the_same_under_the_same_seed() -> None:
    async def outcomes(seed: int) -> list[str]:
        rule = FaultRule(kind="rate_limit", probability=0.5)
        ex = PaperExchange({"options": {"engine": PaperVenue(stepped(seed=seed, faults=[rule]))}})
        out = []
        for _ in range(30):
            try:
                await ex.fetch_balance()
                out.append("ok")
            except ccxt.RateLimitExceeded:
                out.append("429")
        await ex.close()
        return out

    first = await outcomes(7)
    assert first == await outcomes(7) and "ok" in first and "429" in first
    assert first != await outcomes(8)


async def test_a_cancel_whose_response_is_lost_still_took_effect(nats_venue: RunningVenue) -> None:
    ex = await client_with_faults(nats_venue, {"kind": "network_error", "methods": ["cancel_order"],
                                               "client_order_id_prefix": "cx-"})
    order = await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "cx-1"})
    with pytest.raises(ccxt.NetworkError):
        await ex.cancel_order(order["id"], SYMBOL)  # addressed by id: the rule still finds its clientOrderId
    assert (await ex.fetch_order(order["id"], SYMBOL))["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):  # the retry learns it is already gone, as on Binance
        await ex.cancel_order(order["id"], SYMBOL)
    await ex.close()
