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
from bus.replay import fill_rows, read_stream, timeline
from bus.server import EmbeddedNats
from messages import encode, headers_for
from tests.unit.factories import make

__all__ = ["run"]

TARGET_MSGS_PER_S = 50_000
PER_EXECUTION = 20


def _execution(i: int) -> list[Any]:
    """One execution's messages, built by the contract's own factories."""
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
    )

    intent_id = f"bench-{i}"
    out: list[Any] = [make(SubmitIntent, intent_id=intent_id), make(IntentAccepted, intent_id=intent_id)]
    out += [make(PriceRequested, intent_id=intent_id, attempt=a) for a in (0, 1)]
    out += [make(PriceQuoted, intent_id=intent_id, attempt=a) for a in (0, 1)]
    cid = f"{intent_id}-1"
    out += [make(PlaceOrder, intent_id=intent_id, client_order_id=cid), make(OrderPlaced, intent_id=intent_id, client_order_id=cid)]
    out += [
        make(OrderFilled, intent_id=intent_id, client_order_id=cid, trade_id=f"{i}-{k}", qty=Decimal("0.001"))
        for k in range(PER_EXECUTION - 11)
    ]
    out += [make(OrderFinalized, intent_id=intent_id, client_order_id=cid), make(StrategyFinished, intent_id=intent_id)]
    out.append(make(ExecutionCompleted, intent_id=intent_id))
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
