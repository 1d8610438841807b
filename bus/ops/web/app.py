"""The web app of `execbus web` (served by `bus.ops.web.server`): the routes, and the hub that follows the log.

One task follows the message log (`bus.msglog.follow_stream`: the recent log, then every new message) and
feeds a `bus.ops.board.Board`; every record it reads is fanned out to the browsers connected over
server-sent events. History never comes from memory: one execution's page reads its messages from the EXEC
stream (`read_stream`), so any execution still in the log opens by id, also after a restart.

Routes:

    /                          the live list of executions and the fill tape (static/index.html)
    /executions/{intent_id}    one execution: its chart, drawn live, and its message timeline
    /api/board                 the board's snapshot (JSON)
    /api/executions/{id}       one execution's records from the stream, its board row and its picture
                               (`bus.ops.picture.picture_json`); 404 with a message for an id not in the log
    /api/events                SSE. `event: record` per new log record (`?intent=ID` for one execution's).
                               `?board=1`: first a `snapshot` (the board), then `row` (an execution's row
                               changed) and `fill` (a new fill on the tape) events; `&records=0`: those
                               only, no `record` events. `?intent=ID&picture=1`: first an `execution` event
                               (what /api/executions/ID returns, empty for an id not logged yet), then,
                               after each batch of new records, a `picture` event (the whole picture again).
    /static/...                the page's own files (no third-party code, nothing from the internet)

Numbers are sent as the messages carry them: decimal strings. A browser that cannot keep up (its queue
overflows) is disconnected; EventSource reconnects and starts again from a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web

from bus.bus import Bus
from bus.msglog import LogRecord, follow_stream, read_stream
from bus.ops.board import Board
from bus.ops.picture import picture_json, picture_of
from bus.ops.web.options import DEFAULT_LOOKBACK_S
from messages import Message, subjects

__all__ = ["Hub", "make_app", "record_json", "execution_json", "picture_for", "STATIC", "DEFAULT_LOOKBACK_S"]

log = structlog.get_logger("execbus.ops.web")

STATIC = Path(__file__).with_name("static")
CLIENT_QUEUE = 20_000
"""Events buffered per browser before it is cut off as too slow."""
HEARTBEAT_S = 10.0
"""An SSE comment this often: keeps proxies from closing an idle stream and finds browsers that left."""
_INTENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CLOSE = object()


def picture_for(records: list[LogRecord]) -> dict[str, Any] | None:
    """The execution's picture as plain JSON (`bus.ops.picture`); None before its first record."""
    return picture_json(picture_of(records)) if records else None


def record_json(record: LogRecord) -> dict[str, Any]:
    """A log record for the browser: `LogRecord.to_json()` plus its message type and intent id."""
    out = record.to_json()
    data = out.get("data")
    out["type"] = data.get("type", "") if isinstance(data, dict) else ""
    parts = subjects.parse(record.subject)
    out["intent_id"] = parts.intent_id if parts is not None else ""
    return out


def _dumps(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


class Client:
    """One browser's event stream: a bounded queue of (event, data, record) the hub fills."""

    def __init__(self, *, intent: str | None, board: bool, records: bool = True) -> None:
        self.intent = intent
        self.board = board
        self.records = records
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.dropped = False

    def offer(self, item: Any) -> None:
        if self.dropped:
            return
        if self.queue.qsize() >= CLIENT_QUEUE:
            self.dropped = True  # too slow: cut off, it reconnects from a fresh snapshot
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(_CLOSE)
            return
        self.queue.put_nowait(item)


class Hub:
    """The one reader of the live log: feeds the board and fans records out to the clients."""

    def __init__(self, bus: Bus, *, lookback_s: float | None = DEFAULT_LOOKBACK_S) -> None:
        self.bus = bus
        self.board = Board()
        self.clients: set[Client] = set()
        self.lookback_s = lookback_s
        self.last_seq = 0
        self.records = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Hub:
        self._task = asyncio.create_task(self._run(), name="execbus-web-hub")
        return self

    async def stop(self) -> None:
        for client in list(self.clients):
            client.offer(_CLOSE)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def subscribe(self, *, intent: str | None = None, board: bool = False, records: bool = True) -> Client:
        client = Client(intent=intent, board=board, records=records)
        self.clients.add(client)
        return client

    def unsubscribe(self, client: Client) -> None:
        self.clients.discard(client)

    async def _run(self) -> None:
        # None: the whole log; 0: only what comes from now on
        since_ns = None if self.lookback_s is None else time.time_ns() - int(self.lookback_s * 1e9)
        while True:
            try:
                async with aclosing(follow_stream(self.bus, "exec.>", since_ns=since_ns)) as records:
                    async for record in records:
                        if record.seq <= self.last_seq:
                            continue  # (read again after a restart of the follow)
                        self._apply(record)
                        since_ns = record.time_ns
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the page keeps serving; the follow starts again
                log.warning("web_follow_failed", error=repr(exc))
                await asyncio.sleep(1.0)

    def _apply(self, record: LogRecord) -> None:
        self.last_seq = record.seq
        self.records += 1
        message: Message | None
        try:
            message = record.message()
        except ValueError:
            message = None
        head = self.board.fills[0] if self.board.fills else None
        row = self.board.apply(message, record.time_ns) if message is not None else None
        fill = self.board.fills[0] if self.board.fills and self.board.fills[0] is not head else None
        if not self.clients:
            return
        rec = record_json(record)
        rec_text = json.dumps(rec, separators=(",", ":"))
        row_text = _dumps(row) if row is not None else None
        fill_text = _dumps(fill) if fill is not None else None
        for client in list(self.clients):
            if client.intent is not None and client.intent != rec["intent_id"]:
                continue
            if client.records:
                client.offer(("record", rec_text, record))
            if client.board:
                if row_text is not None:
                    client.offer(("row", row_text, None))
                if fill_text is not None:
                    client.offer(("fill", fill_text, None))

    def snapshot(self) -> dict[str, Any]:
        snap = msgspec.to_builtins(self.board.snapshot(time.time_ns()))
        snap["records"] = self.records
        return snap


HUB_KEY = web.AppKey("hub", Hub)
BUS_KEY = web.AppKey("bus", Bus)


# -- handlers ---------------------------------------------------------------------------------------------


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=_dumps(obj), status=status, content_type="application/json")


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def _execution_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "execution.html")


async def _api_board(request: web.Request) -> web.Response:
    return _json(request.app[HUB_KEY].snapshot())


async def history(bus: Bus, intent_id: str) -> list[LogRecord]:
    async with aclosing(read_stream(bus, f"{subjects.PREFIX}.*.*.*.{intent_id}")) as records:
        return [r async for r in records]


def execution_json(intent_id: str, records: list[LogRecord]) -> dict[str, Any]:
    board = Board(intent_id=intent_id)
    for record in records:
        try:
            board.apply(record.message(), record.time_ns)
        except ValueError:
            pass
    row = board.rows.get(intent_id)
    return {
        "intent_id": intent_id,
        "row": msgspec.to_builtins(row) if row is not None else None,
        "records": [record_json(r) for r in records],
        "picture": picture_for(records),
    }


def _unknown(intent_id: str, why: str) -> web.Response:
    return _json({"error": f"unknown execution {intent_id!r}: {why}", "intent_id": intent_id}, status=404)


async def _api_execution(request: web.Request) -> web.Response:
    intent_id = request.match_info["intent_id"]
    if not _INTENT_ID.fullmatch(intent_id):
        return _unknown(intent_id, "not an intent id (1-64 of A-Z a-z 0-9 _ -)")
    records = await history(request.app[BUS_KEY], intent_id)
    if not records:
        return _unknown(intent_id, "nothing is logged for it in the EXEC stream")
    return _json(execution_json(intent_id, records))


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def _api_events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    intent = request.query.get("intent") or None
    if intent is not None and not _INTENT_ID.fullmatch(intent):
        return _json({"error": f"not an intent id: {intent!r}"}, status=400)
    want_board = request.query.get("board") in ("1", "true")
    want_picture = intent is not None and request.query.get("picture") in ("1", "true")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    # Subscribed before anything is read, and the board's snapshot taken in the same step (no await between):
    # every event queued for this client comes after the snapshot, and none falls between history and live.
    client = hub.subscribe(intent=intent, board=want_board,
                           records=not want_board or request.query.get("records") not in ("0", "false"))
    snapshot = hub.snapshot() if want_board else None
    try:
        await response.write(b": connected\n\n")
        if snapshot is not None:
            await response.write(_sse("snapshot", _dumps(snapshot)))
        records: list[LogRecord] = []
        seen: set[int] = set()
        if want_picture:
            assert intent is not None
            records = await history(request.app[BUS_KEY], intent)
            seen = {r.seq for r in records}
            await response.write(_sse("execution", _dumps(execution_json(intent, records))))
        while True:
            try:
                item = await asyncio.wait_for(client.queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": heartbeat\n\n")
                continue
            batch = [item]
            while not client.queue.empty():
                batch.append(client.queue.get_nowait())
            changed = False
            out: list[bytes] = []
            closing = False
            for entry in batch:
                if entry is _CLOSE:
                    closing = True
                    break
                event, text, record = entry
                if want_picture and event == "record":
                    if record.seq in seen:
                        continue
                    seen.add(record.seq)
                    records.append(record)
                    changed = True
                out.append(_sse(event, text))
            if changed:
                out.append(_sse("picture", _dumps(picture_for(records))))
            if out:
                await response.write(b"".join(out))
            if closing:
                break
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        hub.unsubscribe(client)
    return response


def make_app(bus: Bus, hub: Hub) -> web.Application:
    app = web.Application()
    app[BUS_KEY] = bus
    app[HUB_KEY] = hub
    app.router.add_get("/", _index)
    app.router.add_get("/executions/{intent_id}", _execution_page)
    app.router.add_get("/api/board", _api_board)
    app.router.add_get("/api/executions/{intent_id}", _api_execution)
    app.router.add_get("/api/events", _api_events)
    app.router.add_static("/static/", STATIC, show_index=False)
    return app
