"""The paper venue as a service on the bus: one simulated venue, many clients, consistent state.

`run_paper_venue(nats_url, config, stop=...)` connects to NATS, builds a `PaperVenue`, and registers a
NATS micro service `paper-venue` (so `nats micro ls/info/stats` work) with one endpoint per request
(`venue.<name>.rpc.<method>`) and per control command (`venue.<name>.ctl.<command>`). Order, trade and
book events are published on `venue.<name>.evt.…` (see `venues.subjects`).

All state lives in one asyncio loop, so requests and the replay never race: each request runs to
completion between awaits. Requests are handled in their own tasks so that simulated latency on one
does not hold back the others; with zero latency they execute in arrival order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import nats
import structlog
from nats.micro import add_service
from nats.micro.request import Request

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
                await self.nc.publish(subject, data)

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
            await request.respond(encode(body))
        except Exception:  # the client's inbox vanished, or the connection is closing
            log.debug("paper_reply_failed", method=name, exc_info=True)


async def run_paper_venue(nats_url: str, config: PaperVenueConfig, *, stop: asyncio.Event) -> None:
    """Serve a paper venue on `nats_url` until `stop` is set (wired as `execbus venue paper`)."""
    nc = await nats.connect(nats_url, name=f"execbus-paper-venue-{config.venue}",
                            max_reconnect_attempts=-1, allow_reconnect=True)
    try:
        venue = await asyncio.to_thread(PaperVenue, config)
        async with PaperVenueService(nc, venue):
            await venue.run(stop)
    finally:
        await nc.drain()
