"""Benchmark: how fast ops can read the log back (`replay show`, `replay fills`).

A fresh embedded nats-server's `EXEC` stream is filled with N realistic messages — executions of 20
messages each (intent, quotes, orders, fills, report), as the actors write them — then read back:

- `fills`: every `OrderFilled` of the whole log through `read_stream` + `fill_rows` (the `replay fills`
  path): decoded and formatted rows per second, over the messages the consumer delivered;
- `export`: the whole log through `read_stream` + `timeline` (the `replay show`/`export` decode path);
- `show`: one execution's timeline found among N messages (latency of a lookup by intent id).

Target (issue 6): replay decodes at >= 50,000 messages/s.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from bench.common import BenchResult, Table, Target, fmt
from bus.bus import Bus, subject_of
from bus.ops.replay import fill_rows, read_stream, timeline
from bus.server import EmbeddedNats
from messages import (
    ExecutionCompleted,
    IntentAccepted,
    OrderFilled,
    OrderFinalized,
    OrderPlaced,
    PlaceOrder,
    PriceQuoted,
    PriceRequested,
    StrategyFinished,
    SubmitIntent,
    encode,
    headers_for,
)

__all__ = ["run"]

TARGET_MSGS_PER_S = 50_000
PER_EXECUTION = 20


def _execution(i: int) -> list[Any]:
    """One market execution's messages, as the actors write them (built here: the benchmark must run
    from an installed package, which has no tests)."""
    intent_id = f"bench-{i}"
    r = {"intent_id": intent_id, "venue": "paper", "symbol": "BTC/USDT"}
    cid = f"{intent_id}-1"
    bid, ask, qty = Decimal("61837.63"), Decimal("61837.64"), Decimal("0.001")
    fills = PER_EXECUTION - 11
    out: list[Any] = [
        SubmitIntent(**r, side="buy", qty=qty * fills),
        IntentAccepted(**r, side="buy", qty=qty * fills, strategy="market", deadline_ns=1),
    ]
    for attempt in (0, 1):
        out.append(PriceRequested(**r, attempt=attempt, side="buy", mode="cross", qty=qty * fills))
        out.append(PriceQuoted(**r, attempt=attempt, side="buy", mode="cross", price=ask, bid=bid, ask=ask, tick_size=Decimal("0.01")))
    out.append(PlaceOrder(**r, client_order_id=cid, attempt=1, side="buy", order_type="market", qty=qty * fills))
    out.append(OrderPlaced(**r, client_order_id=cid, order_id=str(i), attempt=1, side="buy", order_type="market", qty=qty * fills))
    out += [
        OrderFilled(**r, client_order_id=cid, order_id=str(i), trade_id=f"{i}-{k}", attempt=1, side="buy", qty=qty,
                    price=ask, fee=Decimal("0.000001"), fee_currency="BTC", liquidity="taker")
        for k in range(fills)
    ]
    out.append(OrderFinalized(**r, client_order_id=cid, order_id=str(i), attempt=1, status="filled", filled_qty=qty * fills))
    out.append(StrategyFinished(**r, client_order_ids=(cid,), reason="filled", attempts=1, fallback_used=False))
    out.append(
        ExecutionCompleted(
            **r, status="filled", side="buy", strategy="market", qty=qty * fills, filled_qty=qty * fills, avg_price=ask,
            notional=ask * qty * fills, fees=Decimal("0"), fee_currency="USDT", arrival_mid=(bid + ask) / 2,
            slippage_bps=Decimal("0.0008"), attempts=1, fallback_used=False, fills=fills, orders=(cid,),
            reason="filled", started_ns=0, completed_ns=1, duration_ms=Decimal("1"),
        )
    )
    return out


async def _fill(bus: Bus, n: int) -> float:
    """Publish n messages with JetStream async acks, in windows; returns messages/s stored."""
    t0 = time.perf_counter()
    sent = 0
    i = 0
    window: list[Any] = []
    while sent < n:
        for msg in _execution(i):
            if sent >= n:
                break
            window.append(await bus.js.publish_async(subject_of(msg), encode(msg), headers=headers_for(msg)))
            sent += 1
            if len(window) >= 4000:
                await asyncio.gather(*window)
                window.clear()
        i += 1
    await asyncio.gather(*window)
    return n / (time.perf_counter() - t0)


async def run(quick: bool, args: list[str]) -> BenchResult:
    n = 20_000 if quick else 1_000_000
    if args and args[0].isdigit():
        n = int(args[0])
    async with EmbeddedNats() as server:
        bus = await Bus.connect(server.url, name="bench-replay")
        try:
            write_rate = await _fill(bus, n)

            t0 = time.perf_counter()
            fills = fill_rows([r async for r in read_stream(bus, "exec.order_filled.>")])
            fills_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            count = 0
            async for record in read_stream(bus):
                timeline([record])
                count += 1
            export_s = time.perf_counter() - t0

            target_id = f"bench-{(n // PER_EXECUTION) // 2}"
            t0 = time.perf_counter()
            one = timeline([r async for r in read_stream(bus, f"exec.*.*.*.{target_id}")])
            show_ms = (time.perf_counter() - t0) * 1000
        finally:
            await bus.close()

    fills_rate = len(fills) / fills_s if fills_s else 0.0
    export_rate = count / export_s if export_s else 0.0
    table = Table(
        f"replay decode rate over a log of {n:,} messages",
        ["path", "messages", "seconds", "messages/s", "target"],
        [
            ["replay fills (OrderFilled only)", len(fills), round(fills_s, 2), round(fills_rate), f">= {TARGET_MSGS_PER_S:,}"],
            ["export / timeline (all)", count, round(export_s, 2), round(export_rate), f">= {TARGET_MSGS_PER_S:,}"],
            [f"show one intent ({len(one)} rows)", len(one), round(show_ms / 1000, 3), "-", "-"],
            ["(writing the log, async acks)", n, round(n / write_rate, 2), round(write_rate), "-"],
        ],
    )
    worst = min(fills_rate, export_rate)
    return BenchResult(
        params={"messages": n, "per_execution": PER_EXECUTION, "quick": quick},
        results={
            "fills_msgs_per_s": round(fills_rate),
            "export_msgs_per_s": round(export_rate),
            "show_one_ms": round(show_ms, 2),
            "write_msgs_per_s": round(write_rate),
        },
        tables=[table],
        targets=[
            Target(
                "replay decode rate",
                f">= {TARGET_MSGS_PER_S:,} msg/s",
                f"{fmt(worst, 0)} msg/s (slowest path)",
                worst >= TARGET_MSGS_PER_S,
            )
        ],
    )
