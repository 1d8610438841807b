"""The simulator as a service on a real nats-server: many clients, one consistent venue."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from decimal import Decimal
from pathlib import Path

import ccxt
import pytest

from bus.server import EmbeddedNats
from venues.config import PaperVenueConfig
from venues.service import run_paper_venue

from paper_helpers import (SYMBOL, RunningVenue, check_balance, check_order, check_order_book, check_trade,
                           wait_for_venue)

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, json, sys
from venues.paper import PaperExchange

async def main(url):
    ex = PaperExchange({"options": {"natsUrl": url, "account": "shared"}})
    order = await ex.create_order("BTC/USDT", "limit", "buy", 0.5, 50000, {"clientOrderId": "from-child"})
    parent = await ex.fetch_order(None, "BTC/USDT", {"clientOrderId": "from-parent"})
    balance = await ex.fetch_balance()
    print(json.dumps({"order": order["id"], "parent_status": parent["status"],
                      "usdt_used": balance["info"]["balances"][1]["locked"],
                      "open": sorted(o["clientOrderId"] for o in await ex.fetch_open_orders())}))
    await ex.close()

asyncio.run(main(sys.argv[1]))
"""


async def test_over_nats_every_structure_passes_ccxt_validators(nats_venue: RunningVenue) -> None:
    ex = nats_venue.client()
    await ex.load_markets()
    check_order_book(ex, await ex.fetch_order_book(SYMBOL, 5))
    check_balance(ex, await ex.fetch_balance())
    order = await ex.create_order(SYMBOL, "market", "buy", 0.3)
    check_order(ex, order)
    assert order["status"] == "closed"
    for trade in await ex.fetch_my_trades(SYMBOL):
        check_trade(ex, trade)
    await ex.close()


async def test_errors_cross_the_wire_as_the_same_ccxt_class(nats_venue: RunningVenue) -> None:
    ex = nats_venue.client()
    await ex.load_markets()
    with pytest.raises(ccxt.InsufficientFunds):
        await ex.create_order(SYMBOL, "limit", "buy", 1000, 50000)
    with pytest.raises(ccxt.OrderNotFound):
        await ex.fetch_order("999999", SYMBOL)
    await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "dup"})
    with pytest.raises(ccxt.DuplicateOrderId):
        await ex.create_order(SYMBOL, "limit", "buy", 0.01, 50000, {"clientOrderId": "dup"})
    await ex.close()


async def test_watch_orders_trades_and_book_over_nats(nats_venue: RunningVenue) -> None:
    ex = nats_venue.client()
    await ex.load_markets()
    book = await ex.watch_order_book(SYMBOL)
    orders = asyncio.create_task(ex.watch_orders(SYMBOL))
    trades = asyncio.create_task(ex.watch_my_trades(SYMBOL))
    while len(ex._streams) < 3:  # both subscriptions registered with the server
        await asyncio.sleep(0.005)
    order = await ex.create_order(SYMBOL, "limit", "buy", 0.05, book["bids"][0][0], {"clientOrderId": "rest-1"})
    assert (await asyncio.wait_for(orders, 5))[-1]["status"] == "open"
    done = await ex.paper_control("advance_until", {"clientOrderId": "rest-1", "max_seconds": 170})
    assert done["reached"]
    fills = await asyncio.wait_for(trades, 5)
    assert fills[0]["order"] == order["id"] and fills[0]["takerOrMaker"] == "maker"
    nxt = await asyncio.wait_for(ex.watch_order_book(SYMBOL, 5), 5)
    check_order_book(ex, nxt, "watchOrderBook")
    assert nxt["timestamp"] > book["timestamp"]
    await ex.close()


async def test_two_clients_in_different_processes_see_the_same_orders_and_balances(nats_venue: RunningVenue) -> None:
    ex = nats_venue.client(account="shared")
    await ex.load_markets()
    mine = await ex.create_order(SYMBOL, "limit", "buy", 0.5, 50000, {"clientOrderId": "from-parent"})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, nats_venue.url, cwd=str(ROOT), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    child = json.loads(out.decode().strip().splitlines()[-1])
    assert child["parent_status"] == "open"
    assert child["open"] == ["from-child", "from-parent"]
    assert Decimal(child["usdt_used"]) == Decimal(50000)  # both reservations, as the child saw them
    theirs = await ex.fetch_order(child["order"], SYMBOL)
    assert theirs["clientOrderId"] == "from-child" and theirs["status"] == "open"
    balance = await ex.fetch_balance()
    assert balance["used"]["USDT"] == 50000 and balance["free"]["USDT"] == 10_000_000 - 50000
    assert sorted(o["id"] for o in await ex.fetch_open_orders(SYMBOL)) == sorted([mine["id"], child["order"]])
    await ex.close()


async def test_a_real_time_venue_replays_at_the_configured_speed() -> None:
    async with EmbeddedNats() as server:
        stop = asyncio.Event()
        task = asyncio.create_task(run_paper_venue(server.url, PaperVenueConfig(speed=100.0), stop=stop))
        await wait_for_venue(server.url)
        ex = RunningVenue(server.url, stop, task).client()
        start = await ex.fetch_time()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while await ex.fetch_time() - start < 20_000:  # 20 s of market: ~0.2 s of wall time at 100x
            assert loop.time() - t0 < 10, "replay did not advance"
            await asyncio.sleep(0.02)
        stats = await ex.paper_control("stats")
        assert stats["achieved_speed"] > 50 and stats["markets"][SYMBOL]["synced"]
        await ex.close()
        stop.set()
        await asyncio.wait_for(task, 10)
