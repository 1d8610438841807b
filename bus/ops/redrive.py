"""`execbus replay redrive <log>`: re-run the intents of a log on a fresh simulated system (paper exchange,
same recorded market data and seed, virtual time) and put each outcome beside the original.

Each intent is submitted at the market time it originally arrived: its `SubmitIntent.ts_event` when the log
comes from a simulation (market time), otherwise the exchange time of the book its arrival quote was
priced from. A log produced by a simulation is reproduced exactly; a live log shows what the same code
would do on the recording, which is the point of trying a changed strategy on yesterday's intents.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from bus.ops.replay import LogRecord, read_file
from bus.ops.sim import Arrival, Simulation
from messages import ExecutionCompleted, IntentRejected, PriceQuoted, SubmitIntent

__all__ = ["COMPARED", "arrivals_from", "compare", "redrive_records", "redrive_file"]

COMPARED = ("status", "filled_qty", "avg_price", "notional", "fees", "slippage_bps", "attempts", "fallback_used", "fills")
DAY_NS = 86_400 * 1_000_000_000


def arrivals_from(records: list[LogRecord], market_start_ns: int) -> list[Arrival]:
    quotes = {}
    for record in records:
        msg = record.message()
        if isinstance(msg, PriceQuoted) and msg.attempt == 0 and msg.book_ts_ns:
            quotes.setdefault(msg.intent_id, msg.book_ts_ns)
    arrivals = []
    seen: set[str] = set()
    for record in records:
        msg = record.message()
        if not isinstance(msg, SubmitIntent) or msg.intent_id in seen:
            continue
        seen.add(msg.intent_id)
        if abs(msg.ts_event - market_start_ns) < DAY_NS:
            at = msg.ts_event  # logged by a simulation: already market time
        else:
            at = quotes.get(msg.intent_id, market_start_ns)
        arrivals.append(Arrival(max(at, market_start_ns), msg))
    return arrivals


def originals_from(records: list[LogRecord]) -> dict[str, ExecutionCompleted | IntentRejected]:
    out: dict[str, ExecutionCompleted | IntentRejected] = {}
    for record in records:
        msg = record.message()
        if isinstance(msg, ExecutionCompleted) or (isinstance(msg, IntentRejected) and not msg.duplicate):
            out.setdefault(msg.intent_id, msg)
    return out


def _value(outcome: Any, field: str) -> Any:
    if isinstance(outcome, IntentRejected):
        return "rejected" if field == "status" else None
    value = getattr(outcome, field, None)
    return value.normalize() if isinstance(value, Decimal) else value


def compare(original: Any, again: Any) -> dict[str, tuple[Any, Any]]:
    """The fields that differ (empty when the outcome is reproduced)."""
    diff = {}
    for field in COMPARED:
        a, b = _value(original, field), _value(again, field)
        if a != b:
            diff[field] = (a, b)
    return diff


async def redrive_records(records: list[LogRecord], *, data: list[str] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    from venues.config import MarketConfig, PaperVenueConfig

    config = PaperVenueConfig(seed=seed, markets=[MarketConfig(files=data)]) if data else PaperVenueConfig(seed=seed)
    originals = originals_from(records)
    async with Simulation(config) as sim:
        arrivals = arrivals_from(records, sim.clock.now_ns())
        again = await sim.run(arrivals)
    rows = []
    for arrival in arrivals:
        intent_id = arrival.intent.intent_id
        original, new = originals.get(intent_id), again.get(intent_id)
        rows.append(
            {
                "intent_id": intent_id,
                "strategy": arrival.intent.strategy,
                "original": {f: _json(_value(original, f)) for f in COMPARED} if original else None,
                "redrive": {f: _json(_value(new, f)) for f in COMPARED} if new else None,
                "differences": sorted(compare(original, new)) if original and new else ["missing"],
            }
        )
    return rows


async def redrive_file(path: str | Path, *, data: list[str] | None = None, seed: int = 0, json_lines: bool = False) -> int:
    """The CLI: exit 0 when every outcome is reproduced, 1 otherwise."""
    records = list(read_file(path))
    rows = await redrive_records(records, data=data, seed=seed)
    if json_lines:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_rows(rows))
    return 0 if all(not row["differences"] for row in rows) else 1


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'intent':<24} {'strategy':<17} {'field':<13} {'original':>22} {'redrive':>22}"]
    for row in rows:
        first = True
        for field in ("status", "filled_qty", "avg_price", "slippage_bps", "attempts", "fallback_used"):
            a = (row["original"] or {}).get(field)
            b = (row["redrive"] or {}).get(field)
            mark = "" if a == b else "  <- differs"
            head = f"{row['intent_id']:<24} {row['strategy']:<17}" if first else " " * 42
            lines.append(f"{head} {field:<13} {str(a):>22} {str(b):>22}{mark}")
            first = False
    same = sum(1 for r in rows if not r["differences"])
    lines.append(f"\n{same} of {len(rows)} outcomes reproduced exactly")
    return "\n".join(lines)


def _json(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value
