"""Replies and events bigger than the server's max_payload: split by the service, reassembled by the
client, invisible to ccxt callers. Real nats-server; orders are placed straight into the engine (same
process as the service) so thousands of them take milliseconds, and are then read back over NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import ccxt
import msgspec
import nats
import pytest

from bus.server import EmbeddedNats
from venues.chunks import CHUNK, CHUNKS, EVENT, EventAssembler, PendingReplies, event_chunks, header_size
from venues.paper import PaperExchange
from venues.service import PaperVenueService
from venues.simulator import PaperVenue

from paper_helpers import SYMBOL, stepped

SMALL = 64 * 1024


class Served:
    def __init__(self, url: str, venue: PaperVenue, service: PaperVenueService) -> None:
        self.url, self.venue, self.service = url, venue, service

    def client(self, **options: object) -> PaperExchange:
        return PaperExchange({"options": {"natsUrl": self.url, **options}})


@asynccontextmanager
async def served(tmp_path: Path, max_payload: int | None = None) -> AsyncIterator[Served]:
    """A nats-server (optionally with a small max_payload) and a paper venue service we can reach into."""
    config = None
    if max_payload is not None:
        config = tmp_path / "nats.conf"
        config.write_text(f"max_payload: {max_payload}\n")
    async with EmbeddedNats(config_file=str(config) if config else None) as server:
        nc = await nats.connect(server.url)
        try:
            async with PaperVenueService(nc, PaperVenue(stepped())) as service:
                yield Served(server.url, service.venue, service)
        finally:
            await nc.drain()


def rest_orders(venue: PaperVenue, account: str, n: int, side: str = "buy", price: Decimal | None = None) -> None:
    """`n` resting 0.001 BTC limit orders (distinct prices far from the touch unless `price` is given)."""
    for i in range(n):
        p = price if price is not None else Decimal(40000) + i
        venue.engine.create_order(account, SYMBOL, "limit", side, Decimal("0.001"), p)


async def test_fetch_open_orders_returns_4000_orders_over_a_1mb_server(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        rest_orders(s.venue, "big", 4000)
        rest_orders(s.venue, "other", 2500)
        big, other = s.client(account="big"), s.client(account="other")
        await big.load_markets()
        await other.load_markets()
        assert (await big._tx()._conn()).max_payload == 1024 * 1024
        # both at once: two split replies in flight never mix
        mine, theirs = await asyncio.gather(big.fetch_open_orders(SYMBOL), other.fetch_open_orders(SYMBOL))
        expected = {o.id for o in s.venue.engine.open_orders("big")}
        assert len(mine) == 4000 and {o["id"] for o in mine} == expected
        assert len(theirs) == 2500 and not expected & {o["id"] for o in theirs}
        assert len(msgspec.json.encode([o["info"] for o in mine])) > 1024 * 1024  # it really was split
        assert len(s.service.pending) == 0  # every held reply freed once fully pulled
        await big.close()
        await other.close()


async def test_a_create_order_filling_hundreds_of_resting_orders_over_a_small_max_payload(tmp_path: Path) -> None:
    async with served(tmp_path, SMALL) as s:
        ex = s.client(account="taker")
        await ex.load_markets()
        assert (await ex._tx()._conn()).max_payload == SMALL
        ms = s.venue.engine.markets[SYMBOL]
        ask = ms.best(False)
        assert ask is not None
        rest_orders(s.venue, "maker", 300, "sell", ask)
        level = ms.level_qty(False, ask)  # recorded quantity plus our 300 makers behind it
        updates = asyncio.create_task(ex.watch_orders(SYMBOL))
        await asyncio.wait_for(_subscribed(ex), 5)  # the watch's subscription exists: no event says so
        order = await ex.create_order(SYMBOL, "limit", "buy", float(level), float(ask))
        assert order["status"] == "closed" and Decimal(order["info"]["executedQty"]) == level
        assert len(order["trades"]) == 301 and len(msgspec.json.encode(order["info"])) > SMALL
        event = (await asyncio.wait_for(updates, 5))[-1]  # the same order as one (chunked) event
        assert event["id"] == order["id"] and len(event["trades"]) == 301
        trades = await ex.fetch_order_trades(order["id"], SYMBOL)
        assert sum(Decimal(t["info"]["qty"]) for t in trades) == level
        await ex.close()


async def test_small_replies_are_unchanged_and_a_lost_remainder_is_a_network_error(tmp_path: Path) -> None:
    async with served(tmp_path, SMALL) as s:
        nc = await nats.connect(s.url)
        msg = await nc.request(s.venue.subjects.rpc("time"), b'{"account":"main"}', timeout=5)
        assert msg.headers is None and msgspec.json.decode(msg.data)["ok"] > 0  # no header, no chunking
        gone = await nc.request(s.service._more, b'{"handle":"nope","index":1}', timeout=5)
        assert msgspec.json.decode(gone.data)["error"] == "NetworkError"
        await nc.drain()
        rest_orders(s.venue, "main", 400)
        s.service.pending.ttl_s = 0  # the rest expires before the client can pull it
        ex = s.client()
        await ex.load_markets()
        with pytest.raises(ccxt.NetworkError) as raised:  # executed, answer lost: outcome unknown
            await ex.fetch_open_orders(SYMBOL)
        assert not isinstance(raised.value, ccxt.ExchangeNotAvailable)  # that one means "not executed"
        await ex.close()


def test_pending_replies_chunk_exactly_and_are_freed_or_expire() -> None:
    now = [0.0]
    pending = PendingReplies(ttl_s=30, max_bytes=12_000, clock=lambda: now[0])
    data = bytes(range(256)) * 20  # 5120 bytes
    first, headers = pending.hold(data, 1000, "venue.paper.chunk.x")
    assert len(first) + header_size(headers) <= 1000  # the server counts headers against max_payload
    parts = [bytes(first)]
    for i in range(1, int(headers[CHUNKS])):
        part, h = pending.take(headers["Paper-Handle"], i)
        assert len(part) + header_size(h) <= 1000 and h == {CHUNK: str(i)}
        parts.append(bytes(part))
    assert b"".join(parts) == data and len(pending) == 0  # freed after the last chunk
    handles = [pending.hold(data, 1000, "s")[1]["Paper-Handle"] for _ in range(3)]
    assert len(pending) == 2  # 3 x 5120 bytes > max_bytes: the oldest went
    with pytest.raises(KeyError):
        pending.take(handles[0], 1)
    with pytest.raises(KeyError):
        pending.take(handles[1], 99)  # no such chunk
    now[0] = 31.0
    with pytest.raises(KeyError):
        pending.take(handles[2], 1)  # expired
    assert len(pending) == 0


def test_event_chunks_reassemble_and_an_event_with_a_lost_chunk_is_discarded() -> None:
    data = b"x" * 3000 + b"y" * 3000
    chunks = list(event_chunks(data, 1000, "e1"))
    assert len(chunks) > 6 and all(len(p) + header_size(h) <= 1000 for p, h in chunks)
    assembler = EventAssembler()
    out = [assembler.add(bytes(p), h) for p, h in chunks]
    assert out[:-1] == [None] * (len(chunks) - 1) and out[-1] == data
    lossy = list(event_chunks(data, 1000, "e2"))
    del lossy[2]
    assert all(assembler.add(bytes(p), h) is None for p, h in lossy) and assembler.discarded >= 1
    assert assembler.add(bytes(chunks[0][0]), {**chunks[0][1], EVENT: "e3"}) is None  # a new event still works


async def _subscribed(ex: PaperExchange) -> None:
    while not ex._streams:
        await asyncio.sleep(0.005)
