"""The message log for ops: read it back from JetStream or from a JSONL file (the reader itself is the
runtime's, `bus.msglog`, re-exported here), show an intent's timeline, list fills, export and import a
portable log.

A log record is one stored message: its live subject, the time it was logged, its headers and its JSON
body. The export format is one record per line::

    {"seq": 17, "subject": "exec.order_filled.paper.BTC-USDT.I-1", "time_ns": 1723161255208000000,
     "headers": {"Nats-Msg-Id": "..."}, "data": {"type": "OrderFilled", ...}}

`import` writes records into a separate stream (`EXEC_IMPORT`, subjects `import.exec.>`) so that no actor
consumes them: an imported log is for reading, never for re-executing (that is `redrive`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import nats.js.errors
from nats.js.api import StreamConfig

from bus.bus import Bus
from bus.msglog import HEADER_LOGGED_AT, IMPORT_PREFIX, IMPORT_STREAM, LogRecord, read_file, read_stream
from messages import Message, OrderFilled, decode_as, subjects

__all__ = [
    "LogRecord",
    "IMPORT_STREAM",
    "read_stream",
    "read_file",
    "write_jsonl",
    "import_records",
    "timeline",
    "format_timeline",
    "fill_rows",
    "format_fills",
]


def write_jsonl(records: Iterable[LogRecord], handle: Any) -> int:
    count = 0
    for record in records:
        handle.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
        count += 1
    return count


async def import_records(bus: Bus, records: Iterable[LogRecord]) -> int:
    """Store records in `EXEC_IMPORT` with their headers and original times; duplicates are stored once."""
    try:
        await bus.js.stream_info(IMPORT_STREAM)
    except nats.js.errors.NotFoundError:
        await bus.js.add_stream(
            StreamConfig(name=IMPORT_STREAM, subjects=[IMPORT_PREFIX + subjects.STREAM_SUBJECTS], duplicate_window=3600)
        )
    count = 0
    for record in records:
        headers = dict(record.headers)
        headers[HEADER_LOGGED_AT] = str(record.time_ns)
        await bus.js.publish(IMPORT_PREFIX + record.subject, record.data, headers=headers)
        count += 1
    return count


# -- views -------------------------------------------------------------------------------------------------

_SKIP = {"intent_id", "venue", "symbol", "msg_id", "ts_event", "ts_init", "params", "type"}


def essentials(msg: Message) -> dict[str, Any]:
    """The fields worth a column: everything but routing, ids, timestamps and empty values."""
    out = {}
    for key, value in msgspec.structs.asdict(msg).items():
        if key in _SKIP or value in (None, "", (), [], False):
            continue
        out[key] = value
    return out


def timeline(records: Iterable[LogRecord]) -> list[dict[str, Any]]:
    """Rows in log order. Offsets use each message's `ts_event` (the producing actor's clock: wall time in a
    live run, market time in a simulation), falling back to the time the log stored it."""
    rows = []
    start = None
    for record in records:
        try:
            msg: Any = record.message()
            kind, fields = type(msg).__name__, essentials(msg)
            at = msg.ts_event or record.time_ns
        except ValueError as exc:
            kind, fields, at = "Undecodable", {"error": str(exc)}, record.time_ns
        start = at if start is None else start
        rows.append(
            {
                "offset_ms": round((at - start) / 1e6, 3),
                "seq": record.seq,
                "subject": record.subject,
                "type": kind,
                "fields": fields,
            }
        )
    return rows


def format_timeline(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'+ms':>10}  {'message':<20}  details"]
    for row in rows:
        detail = " ".join(f"{k}={_short(v)}" for k, v in row["fields"].items())
        lines.append(f"{row['offset_ms']:>10.3f}  {row['type']:<20}  {detail}")
    return "\n".join(lines)


PRODUCERS = {
    "SubmitIntent": "upstream",
    "PriceQuoted": "pricer",
    "PriceUnavailable": "pricer",
    "OrderPlaced": "placer",
    "OrderRejected": "placer",
    "OrderOutcomeUnknown": "placer",
    "OrderCanceled": "placer",
    "CancelRejected": "placer",
    "OrderFilled": "reconciler",
    "OrderFinalized": "reconciler",
    "ExecutionCompleted": "tracker",
    "LateFillRecorded": "tracker",
}
"""Who publishes each message; everything else comes from the supervisor (and a PlaceOrder names its origin)."""


def consumers_by_kind() -> dict[str, list[str]]:
    """Which actors consume each message type, read from the actors themselves."""
    import importlib

    from bus.ops.system import ACTORS

    out: dict[str, list[str]] = {}
    for name, target in ACTORS.items():
        module, cls = target.split(":")
        for kind in getattr(importlib.import_module(module), cls).consumes:
            out.setdefault(kind.__name__, []).append(name)
    return out


def format_diagram(rows: list[dict[str, Any]]) -> str:
    """The choreography of one execution, message by message: who published it and who consumed it.
    A run of the same message from the same actor (a sweep's fills) is one line with a count."""
    consumers = consumers_by_kind()
    lines: list[str] = []
    previous: tuple[str, str] | None = None
    count = 0
    for row in rows:
        kind = row["type"]
        producer = PRODUCERS.get(kind) or row["fields"].get("origin", "supervisor")
        if previous == (kind, producer):
            count += 1
            lines[-1] = _diagram_line(row_first, producer, kind, consumers, count)
            continue
        previous, count, row_first = (kind, producer), 1, row
        lines.append(_diagram_line(row, producer, kind, consumers, 1))
    return "\n".join(lines)


def _diagram_line(row: dict[str, Any], producer: str, kind: str, consumers: dict[str, list[str]], count: int) -> str:
    label = f"{kind} x{count}" if count > 1 else kind
    arrow = f"─ {label} " + "─" * max(2, 22 - len(label)) + "▶"
    targets = ", ".join(consumers.get(kind, [])) or "(monitors)"
    return f"{row['offset_ms']:>9.1f} ms  {producer:<15} {arrow} {targets:<40} {row['subject']}"


class _FillFields(msgspec.Struct, frozen=True):
    """The fields a fill row shows, with the amounts kept as the strings the log holds (they were checked
    as decimals when written): turning a million of them into Decimals and back cost a third of the time."""

    type: str
    intent_id: str
    venue: str
    symbol: str
    side: str
    qty: str
    price: str
    fee: str
    fee_currency: str
    liquidity: str
    client_order_id: str
    trade_id: str


_decode_fill_fields = msgspec.json.Decoder(_FillFields).decode


def fill_rows(records: Iterable[LogRecord]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        msg: Any
        try:
            msg = _decode_fill_fields(record.data)
            if msg.type != "OrderFilled":
                raise msgspec.DecodeError(msg.type)
        except msgspec.DecodeError:
            msg = decode_as(record.data, OrderFilled)  # numbers instead of strings, or not a fill: the full
            # decoder accepts the one and names what is wrong with the other
        rows.append(
            {
                "time": _iso(record.time_ns),
                "intent_id": msg.intent_id,
                "venue": msg.venue,
                "symbol": msg.symbol,
                "side": msg.side,
                "qty": str(msg.qty),
                "price": str(msg.price),
                "fee": str(msg.fee),
                "fee_currency": msg.fee_currency,
                "liquidity": msg.liquidity,
                "client_order_id": msg.client_order_id,
                "trade_id": msg.trade_id,
            }
        )
    return rows


def _iso(ns: int) -> str:
    """RFC 3339 with nanoseconds; `time.strftime` on whole seconds is several times faster than datetime,
    and consecutive records mostly share their second."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return _whole_second(seconds) + f".{fraction:09d}Z"


@functools.lru_cache(maxsize=1024)
def _whole_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_fills(rows: list[dict[str, Any]]) -> str:
    header = f"{'time':<32} {'intent':<24} {'side':<4} {'qty':>14} {'price':>14} {'fee':>14} {'liq':<5} trade"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['time']:<32} {r['intent_id']:<24} {r['side']:<4} {r['qty']:>14} {r['price']:>14} "
            f"{r['fee'] + ' ' + r['fee_currency']:>14} {r['liquidity']:<5} {r['trade_id']}"
        )
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
