"""The paper venue as a service on the bus: one simulated venue, many clients, consistent state.

`run_paper_venue(nats_url, config, stop=...)` connects to NATS, builds a `PaperVenue`, and registers a
NATS micro service `paper-venue` (so `nats micro ls/info/stats` work) with one endpoint per request
(`venue.<name>.rpc.<method>`) and per control command (`venue.<name>.ctl.<command>`). Order, trade and
book events are published on `venue.<name>.evt.…` (see `venues.subjects`).

All state lives in one asyncio loop, so requests and the replay never race: each request runs to
completion between awaits. Requests are handled in their own tasks so that simulated latency on one
does not hold back the others; with zero latency they execute in arrival order.

Replies and events larger than the server's `max_payload` are split (`venues.chunks`): a reply is sent
as its first chunk plus a handle the client pulls the rest with from `venue.<name>.chunk.<instance>`;
an event goes out as consecutive chunk messages. Everything that fits is sent exactly as before.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any

import ccxt
import msgspec
import nats
import structlog
from nats.micro import add_service
from nats.micro.request import Request

from bus.connect import connect_options
from venues.chunks import CHUNKS, PendingReplies, event_chunks
from venues.config import PaperVenueConfig
from venues.simulator import CONTROL_COMMANDS, RPC_METHODS, PaperVenue
from venues.transport import decode, encode, error_body

__all__ = ["PaperVenueService", "run_paper_venue"]

log = structlog.get_logger("execbus.venues.service").bind(actor="paper-venue")

SERVICE_NAME = "paper-venue"
SERVICE_VERSION = "0.1.0"


class PaperVenueService:
    """Binds a `PaperVenue` to a NATS connection. Use `start()` / `stop()` or `async with`."""

    def __init__(self, nc: Any, venue: PaperVenue) -> None:
        self.nc = nc
        self.venue = venue
        self._service: Any = None
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._publishing = asyncio.Lock()  # one drainer at a time keeps events in order
        self._publisher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.pending = PendingReplies()
        self._instance = ""  # the micro service id, known once started
        self._more = ""  # this instance's chunk subject
        self._event_ids = itertools.count(1)

    async def start(self) -> PaperVenueService:
        subjects = self.venue.subjects
        self._service = await add_service(
            self.nc, name=SERVICE_NAME, version=SERVICE_VERSION,
            description=f"execbus paper exchange '{subjects.venue}'",
            metadata={"venue": subjects.venue})
        for method in RPC_METHODS:
            await self._service.add_endpoint(name=f"rpc-{method}", subject=subjects.rpc(method),
                                             handler=self._handler("rpc", method))
        for command in CONTROL_COMMANDS:
            await self._service.add_endpoint(name=f"ctl-{command}", subject=subjects.ctl(command),
                                             handler=self._handler("ctl", command))
        # Per instance, not per venue: only the instance that split a reply holds its remaining chunks.
        self._instance = self._service.id
        self._more = subjects.chunk(self._instance)
        await self._service.add_endpoint(name="chunk", subject=self._more, handler=self._serve_chunk)
        self.venue.listeners.append(self._on_event)
        self._publisher = asyncio.create_task(self._publish_loop())
        await self.nc.flush()
        log.info("paper_venue_started", venue=subjects.venue, markets=list(self.venue.engine.markets),
                 speed=self.venue.config.speed)
        return self

    async def stop(self) -> None:
        if self._on_event in self.venue.listeners:
            self.venue.listeners.remove(self._on_event)
        if self._service is not None:
            await self._service.stop()
            self._service = None
        for task in list(self._tasks):
            task.cancel()
        if self._publisher is not None:
            self._publisher.cancel()
            try:
                await self._publisher
            except asyncio.CancelledError:
                pass
            self._publisher = None
        await self._drain_outbox()

    async def __aenter__(self) -> PaperVenueService:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- events out
    def _on_event(self, subject: str, payload: dict[str, Any]) -> None:
        self._outbox.append((subject, encode(payload)))
        self._wake.set()

    async def _drain_outbox(self) -> None:
        async with self._publishing:
            while self._outbox:
                subject, data = self._outbox.popleft()
                await self._publish(subject, data)

    async def _publish(self, subject: str, data: bytes) -> None:
        limit = self.nc.max_payload  # the connected server's, re-read in case a reconnect changed it
        if len(data) <= limit:
            await self.nc.publish(subject, data)
            return
        event_id = f"{self._instance}-{next(self._event_ids)}"
        for part, headers in event_chunks(data, limit, event_id):
            await self.nc.publish(subject, part, headers=headers)  # type: ignore[arg-type]

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain_outbox()

    # ----------------------------------------------------------------- requests in
    def _handler(self, kind: str, name: str) -> Any:
        async def handler(request: Request) -> None:
            task = asyncio.create_task(self._serve(kind, name, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return handler

    async def _serve(self, kind: str, name: str, request: Request) -> None:
        try:
            payload = decode(request.data) if request.data else {}
            with structlog.contextvars.bound_contextvars(method=name, account=payload.get("account")):
                try:
                    if kind == "rpc":
                        result = await self.venue.handle(name, payload)
                    else:
                        result = self.venue.control(name, payload)
                    body: dict[str, Any] = {"ok": result}
                except Exception as exc:  # every error crosses the wire as a ccxt class name
                    body = error_body(exc)
                    if body["error"] == "ExchangeError":
                        log.exception("paper_request_failed")
            # events caused by this request go out before its reply, as a venue's websocket often does
            await self._drain_outbox()
            await self._respond(request, encode(body))
        except Exception:  # the client's inbox vanished, or the connection is closing
            log.debug("paper_reply_failed", method=name, exc_info=True)

    async def _respond(self, request: Request, data: bytes) -> None:
        limit = self.nc.max_payload
        if len(data) <= limit:  # the fast path: no header, no copy, no extra round trip
            await request.respond(data)
            return
        first, headers = self.pending.hold(data, limit, self._more)
        log.debug("paper_reply_split", bytes=len(data), chunks=headers[CHUNKS])
        await request.respond(first, headers=headers)  # type: ignore[arg-type]

    async def _serve_chunk(self, request: Request) -> None:
        """A client pulling chunk `index` of a split reply."""
        try:
            try:
                p = decode(request.data)
                part, headers = self.pending.take(str(p["handle"]), int(p["index"]))
            except (KeyError, ValueError, TypeError, msgspec.DecodeError):
                # The request itself was executed; only its answer is lost, as when a reply times out.
                gone = ccxt.NetworkError(f"paper reply chunk {request.data[:80]!r} is gone (expired or unknown)")
                await request.respond(encode(error_body(gone)))
                return
            await request.respond(part, headers=headers)  # type: ignore[arg-type]
        except Exception:  # the client's inbox vanished, or the connection is closing
            log.debug("paper_chunk_reply_failed", exc_info=True)


async def run_paper_venue(nats_url: str, config: PaperVenueConfig, *, stop: asyncio.Event, auth: Any = None) -> None:
    """Serve a paper venue on `nats_url` until `stop` is set (wired as `execbus venue paper`). `auth`: who it
    is on the bus (`bus.connect.ClientAuth`); None: from the environment, as the `venue` user."""
    nc = await nats.connect(**connect_options(nats_url, auth, role="venue"), name=f"execbus-paper-venue-{config.venue}",
                            max_reconnect_attempts=-1, allow_reconnect=True)
    try:
        venue = await asyncio.to_thread(PaperVenue, config)
        async with PaperVenueService(nc, venue):
            await venue.run(stop)
    finally:
        await nc.drain()
