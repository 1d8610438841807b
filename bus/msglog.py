"""The message log as the runtime reads it back: a `LogRecord` per stored message, read from JetStream
(`read_stream`) or from an exported JSONL file (`read_file`).

The runtime rebuilds an intent from its messages with `read_stream`; the operator tools built on it
(`bus.ops.replay`: timelines, fills, export, import; `bus.ops.redrive`) read the log the same way.

A log record is one stored message: its live subject, the time it was logged, its headers and its JSON
body. The export format is one record per line::

    {"seq": 17, "subject": "exec.order_filled.paper.BTC-USDT.I-1", "time_ns": 1723161255208000000,
     "headers": {"Nats-Msg-Id": "..."}, "data": {"type": "OrderFilled", ...}}

Imported logs live in a separate stream (`EXEC_IMPORT`, subjects `import.exec.>`) that no actor consumes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.bus import Bus
from bus.consumer import ack_info
from messages import Message, decode, subjects

__all__ = ["LogRecord", "IMPORT_STREAM", "IMPORT_PREFIX", "HEADER_LOGGED_AT", "read_stream", "follow_stream", "read_file"]

IMPORT_STREAM = "EXEC_IMPORT"
IMPORT_PREFIX = "import."
HEADER_LOGGED_AT = "Execbus-Logged-At"
"""Set on imported records: the time the message was first logged, so imported timelines keep their times."""


@dataclass
class LogRecord:
    seq: int
    subject: str
    """The live subject (no partition token, no import prefix)."""
    time_ns: int
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def message(self) -> Message:
        return decode(self.data)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "subject": self.subject,
            "time_ns": self.time_ns,
            "headers": self.headers,
            "data": json.loads(self.data),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LogRecord:
        data = obj["data"]
        raw = json.dumps(data, separators=(",", ":")).encode() if not isinstance(data, str) else data.encode()
        return cls(int(obj.get("seq", 0)), obj["subject"], int(obj["time_ns"]), raw, dict(obj.get("headers") or {}))


def _live(stored: str, shape: subjects.Shape) -> str:
    if stored.startswith(IMPORT_PREFIX):
        return stored[len(IMPORT_PREFIX):]
    return subjects.live_of(stored, shape)


def _stored_filter(live_filter: str, stream: str, shape: subjects.Shape) -> str:
    """A live-subject filter as the stream stores it: `EXEC` adds the partition token where its shape puts
    it, imports keep the live subject behind the `import.` prefix."""
    if stream == IMPORT_STREAM:
        return IMPORT_PREFIX + live_filter
    return subjects.stored_filter(live_filter, shape)


def _shape(info: Any) -> subjects.Shape:
    """The shape of the stream `info` describes (an import, with no transform, stores live subjects)."""
    transform = info.config.subject_transform
    return subjects.shape_of(transform.dest if transform is not None else None) or subjects.CURRENT_SHAPE


async def read_stream(
    bus: Bus,
    live_filter: str = "exec.>",
    *,
    stream: str | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    batch: int = 10_000,
) -> AsyncIterator[LogRecord]:
    """Every stored record matching `live_filter`, oldest first, up to what was stored when we started.

    An ephemeral consumer without acks is pulled in large no-wait batches through a plain subscription,
    and the stream sequence and time are read from the reply subject: nats-py's `fetch` costs several
    event-loop turns per message, which made a million-message log take minutes.
    """
    stream = stream or bus.settings.stream
    try:
        shape = _shape(await bus.js.stream_info(stream))
    except nats.js.errors.NotFoundError:
        return
    info = await bus.js.add_consumer(
        stream,
        ConsumerConfig(
            filter_subject=_stored_filter(live_filter, stream, shape),
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_TIME if since_ns else DeliverPolicy.ALL,
            opt_start_time=_rfc3339(since_ns) if since_ns else None,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    remaining = info.num_pending
    if remaining == 0:
        await _delete_consumer(bus, stream, info.name)
        return
    nc = bus.nc
    inbox = nc.new_inbox()
    buffered: list[Any] = []
    wake = asyncio.Event()
    state = {"outstanding": 0, "ended": False}

    async def on_msg(msg: Any) -> None:
        if not msg.reply:  # a status message: the pull request ended (no more, or expired)
            state["outstanding"] = 0
        else:
            buffered.append(msg)
            state["outstanding"] -= 1
        wake.set()

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=4 * batch, pending_bytes_limit=512 * 1024 * 1024)
    api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{info.name}"
    try:
        while remaining > 0:
            if state["outstanding"] <= 0:
                want = min(batch, remaining)
                state["outstanding"] = want
                await nc.publish(api, json.dumps({"batch": want, "no_wait": True}).encode(), reply=inbox)
            await wake.wait()
            wake.clear()
            taken, buffered[:] = list(buffered), []
            for msg in taken:
                remaining -= 1
                _, seq, stamp, pending = ack_info(msg.reply)
                headers = dict(msg.headers or {})
                logged_at = headers.pop(HEADER_LOGGED_AT, None)
                time_ns = int(logged_at) if logged_at else stamp
                if until_ns is not None and time_ns > until_ns:
                    return
                yield LogRecord(seq, _live(msg.subject, shape), time_ns, msg.data, headers)
                if pending == 0:
                    remaining = 0
            if not taken and state["outstanding"] <= 0 and remaining > 0:
                # The server had nothing more for us (messages expired or were deleted meanwhile).
                return
    finally:
        await sub.unsubscribe()
        await _delete_consumer(bus, stream, info.name)


async def follow_stream(
    bus: Bus,
    live_filter: str = "exec.>",
    *,
    since_ns: int | None = None,
    stream: str | None = None,
) -> AsyncIterator[LogRecord]:
    """Every stored record matching `live_filter` from `since_ns` (or the start), oldest first, then each new
    one as it is stored, until the caller stops iterating: what a live view needs — what is in flight, then
    what happens — with no gap and no duplicate between the two. An ordered consumer (ephemeral, no acks,
    flow control and heartbeats, recreated by nats-py at the next sequence after a gap or a reconnect)."""
    stream = stream or bus.settings.stream
    shape = _shape(await bus.js.stream_info(stream))
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if since_ns else DeliverPolicy.ALL,
        opt_start_time=_rfc3339(since_ns) if since_ns else None,
        mem_storage=True,
    )
    sub = await bus.js.subscribe(
        _stored_filter(live_filter, stream, shape), stream=stream, ordered_consumer=True, config=config,
        pending_msgs_limit=100_000, pending_bytes_limit=256 * 1024 * 1024,
    )
    try:
        async for msg in sub.messages:
            _, seq, stamp, _pending = ack_info(msg.reply)
            headers = dict(msg.headers or {})
            logged_at = headers.pop(HEADER_LOGGED_AT, None)
            yield LogRecord(seq, _live(msg.subject, shape), int(logged_at) if logged_at else stamp, msg.data, headers)
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # (a closed connection: the ephemeral consumer goes away on its own)
            pass


async def _delete_consumer(bus: Bus, stream: str, name: str) -> None:
    try:
        await bus.js.delete_consumer(stream, name)
    except Exception:  # it expires by itself after its inactive threshold
        pass


def read_file(path: str | Path, live_filter: str = "exec.>") -> Iterable[LogRecord]:
    """Records from an exported JSONL file, filtered like the stream would."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = LogRecord.from_json(json.loads(line))
                if subjects.matches(live_filter, record.subject):
                    yield record


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat().replace("+00:00", "Z")
