"""`paper_control("audit")`: every create the venue accepted, in order, plus refusals by class — read over
NATS from another process, across a reply split into chunks by a small max_payload."""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from pathlib import Path

import ccxt
import msgspec
import nats

from bus.server import EmbeddedNats
from venues.config import PaperVenueConfig
from venues.service import PaperVenueService
from venues.simulator import PaperVenue

from paper_helpers import SYMBOL

ROOT = Path(__file__).resolve().parents[2]
READER = """
import asyncio, json, sys
from venues.paper import PaperExchange
async def main():
    ex = PaperExchange({"options": {"natsUrl": sys.argv[1], "account": "auditor"}})
    try:
        print(json.dumps([await ex.paper_control("audit", {"client_order_id_prefix": prefix or None})
                          for prefix in sys.argv[2:]]))
    finally:
        await ex.close()
asyncio.run(main())
"""


async def read_audit_in_another_process(url: str, *prefixes: str) -> list[dict]:
    """One audit per prefix ('' for all), read by a fresh process (one process: importing ccxt is slow)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", READER, url, *prefixes, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def place(venue: PaperVenue, account: str, coid: str, type: str = "limit", amount: str = "0.001",
                price: str | None = "40000") -> None:
    """A create through the venue's request path (budget, refusal counting and all), without a round trip."""
    try:
        await venue.handle("create_order", {"account": account, "symbol": SYMBOL, "type": type, "side": "buy",
                                            "amount": amount, "price": price, "clientOrderId": coid})
    except ccxt.BaseError:
        pass  # refused: counted by the venue


async def test_the_audit_lists_every_accepted_create_in_order_over_a_chunked_reply(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 65536\n")
    venue = PaperVenue(msgspec.convert({"speed": 0, "order_rate_limit": 100_000}, PaperVenueConfig))
    async with EmbeddedNats(config_file=str(conf)) as server:
        nc = await nats.connect(server.url)
        try:
            async with PaperVenueService(nc, venue):
                for i in range(1200):
                    await place(venue, f"acct{i % 3}", f"c-{i}", price=str(40000 + i))
                await place(venue, "acct0", "c-0")  # still open: Binance's duplicate, InvalidOrder
                await place(venue, "acct0", "c-big", amount="1000", price="60000")  # InsufficientFunds
                await place(venue, "acct0", "m-1", type="market", amount="0.01", price=None)
                await place(venue, "acct0", "m-1", type="market", amount="0.01", price=None)  # closed: reusable
                audit, only_m = await read_audit_in_another_process(server.url, "", "m-")
        finally:
            await nc.drain()
    rows = audit["accepted"]
    assert len(json.dumps(audit)) > 3 * 65536  # the reply really was split into chunks
    assert [r["client_order_id"] for r in rows] == [f"c-{i}" for i in range(1200)] + ["m-1", "m-1"]
    assert [int(r["id"]) for r in rows] == sorted(int(r["id"]) for r in rows)
    assert rows[4] == {"client_order_id": "c-4", "id": "5", "symbol": SYMBOL, "side": "buy", "type": "limit",
                       "amount": "0.001", "price": "40004", "filled": "0", "status": "open",
                       "timestamp": rows[4]["timestamp"], "account": "acct1",
                       "received_wall_ms": rows[4]["received_wall_ms"]}
    assert all(r["received_wall_ms"] >= rows[0]["received_wall_ms"] > 0 for r in rows)  # in the order they came
    assert all(r["status"] == "closed" and Decimal(r["filled"]) == Decimal("0.01") for r in rows[-2:])
    assert audit["refused"] == {"InvalidOrder": 1, "InsufficientFunds": 1}
    assert [r["client_order_id"] for r in only_m["accepted"]] == ["m-1", "m-1"]


async def test_rate_limited_and_fault_refused_creates_are_counted_but_not_listed() -> None:
    venue = PaperVenue(msgspec.convert(
        {"speed": 0, "order_rate_limit": 2, "faults": [{"kind": "rate_limit", "client_order_id_prefix": "f-"}]},
        PaperVenueConfig))
    for coid in ("a", "f-1", "b", "c"):
        await place(venue, "main", coid)
    audit = venue.control("audit", {})
    # the injected 429 for 'f-1' uses no budget; 'c' is the third order in the window
    assert [r["client_order_id"] for r in audit["accepted"]] == ["a", "b"]
    assert audit["refused"] == {"RateLimitExceeded": 2}


async def test_the_audit_is_bounded() -> None:
    venue = PaperVenue(msgspec.convert({"speed": 0, "profile": "strict", "audit_limit": 3}, PaperVenueConfig))
    for i in range(5):
        await place(venue, "main", f"x-{i}")
    audit = venue.control("audit", {})
    assert [r["client_order_id"] for r in audit["accepted"]] == ["x-2", "x-3", "x-4"] and audit["dropped"] == 2
