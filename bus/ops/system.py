"""The composition root: starts what `execbus up` (and `demo`, and the end-to-end tests) run in one process —
an embedded nats-server unless a URL is given, the paper venue service, and one replica of each actor.

Actors are loaded by name from `actors.<module>` so the bus knows them only as a registry of factories;
each gets the venue pool and its settings through its constructor.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from bus.bus import Bus
from bus.ops.actors import ACTORS, USES_VENUES, build_actor
from messages import encode
from bus.clock import Clock, WallClock
from bus.runtime import ActorHost
from bus.server import EmbeddedNats
from bus.settings import BusSettings

__all__ = ["ACTORS", "System", "SystemConfig", "build_actor"]

log = structlog.get_logger("execbus.ops.system")



@dataclass
class SystemConfig:
    nats_url: str | None = None
    """Join this server instead of embedding one."""
    port: int = -1
    store_dir: str | None = None
    actors: tuple[str, ...] = tuple(ACTORS)
    paper_venue: bool = True
    """Serve the paper exchange from this process."""
    paper_config: Any = None
    """A `venues.config.PaperVenueConfig`; None for its defaults."""
    venue_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """ccxt options per venue, e.g. {"paper": {"engine": PaperVenue(...)}} for an in-process venue."""
    actor_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Constructor keyword arguments per actor, e.g. {"reconciler": {"poll_interval_s": 0.2}}."""
    settings: BusSettings | None = None
    risk_limits: Any = None
    """A `messages.controls.RiskLimits` to store at start (replacing what the controls bucket holds); None
    keeps the stored limits, or the safe defaults."""
    reconcile_at_start: bool = True
    """List our open orders at the venues and adopt or cancel those nobody watches (bus/ops/startup.py)."""
    http_port: int | None = None
    """Serve the web page of executions (bus/ops/web) on this port beside the system (0: any free port);
    None: no web server."""
    http_host: str = "127.0.0.1"
    auth_dir: str | None = None
    """Least privilege on the bus (bus/ops/auth.py): the users' passwords and the server's `authorization`
    block live here (written if missing); the embedded server enforces them, and every actor, the paper venue,
    the web page and the system itself connect as their own user. None: no users (anyone may do anything)."""


class System:
    """Everything in one process; `async with System(config) as system: system.url`."""

    def __init__(self, config: SystemConfig | None = None, *, clock: Clock | None = None, activity: Any = None) -> None:
        self.config = config or SystemConfig()
        self.clock = clock or WallClock()
        self.activity = activity
        self.server: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.hosts: dict[str, ActorHost] = {}
        self._venue_stop = asyncio.Event()
        self._venue_task: asyncio.Task[None] | None = None
        self._venues: Any = None
        self.auth: Any = None
        """The `bus.ops.auth.AuthDir` when `config.auth_dir` is set."""
        self._actor_buses: list[Bus] = []
        self._actor_venues: list[Any] = []
        self.web: Any = None
        """The `bus.ops.web.WebServer` when `config.http_port` is set (its `.url` once started)."""
        self.url = ""

    async def start(self) -> System:
        config = self.config
        settings = config.settings or BusSettings.from_env()
        if config.auth_dir:
            from bus.ops.auth import write_auth_dir

            self.auth = write_auth_dir(config.auth_dir, settings)
        if config.nats_url:
            self.url = config.nats_url
        else:
            store = config.store_dir or os.environ.get("EXECBUS_STORE")
            self.server = EmbeddedNats(
                store_dir=Path(store) if store else None, port=config.port,
                config_file=str(self.auth.config) if self.auth else None,
            )
            await self.server.start()
            self.url = self.server.url
        self.bus = await Bus.connect(self.url, settings, name="execbus-system", auth=self.credentials("ops"))
        self.bus.activity = self.activity
        if config.risk_limits is not None:
            await self.bus.buckets.controls.put("risk", encode(config.risk_limits))
            (await self.bus.controls()).limits_cached = config.risk_limits
        if config.paper_venue:
            await self._start_paper_venue()
        from venues.gateway import VenuePool

        self._venues = VenuePool(nats_url=self.url, options=config.venue_options)
        pools: dict[str, Any] = {}
        for name in config.actors:
            bus, venues = self.bus, self._venues
            if self.auth is not None:  # each actor on its own connection, as its own user
                bus = await Bus.connect(self.url, settings, name=f"execbus-{name}", auth=self.credentials(name))
                bus.activity = self.activity
                venues = VenuePool(nats_url=self.url, options=config.venue_options, nats_auth=self.credentials(name))
                self._actor_buses.append(bus)
                self._actor_venues.append(venues)
            pools[name] = venues
            actor = build_actor(name, venues, config.actor_options.get(name))
            self.hosts[name] = await ActorHost(bus, actor, clock=self.clock).start()
        if config.reconcile_at_start and "reconciler" in self.hosts:
            from bus.ops.startup import reconcile_with_venues

            await reconcile_with_venues(self.hosts["reconciler"].bus, pools["reconciler"])
        if config.http_port is not None:
            from bus.ops.web.server import WebServer

            try:
                self.web = await WebServer(
                    nats_url=self.url, host=config.http_host, port=config.http_port, auth=self.credentials("monitor")
                ).start()
            except OSError as exc:  # (a ValueError: `execbus up` refuses to run, saying why)
                raise ValueError(f"cannot serve the web page on {config.http_host}:{config.http_port}: {exc}") from exc
        log.info("system_started", nats=self.url, actors=list(self.hosts), **({"web": self.web.url} if self.web else {}))
        return self

    async def _start_paper_venue(self) -> None:
        from venues.config import PaperVenueConfig
        from venues.service import run_paper_venue

        assert self.bus is not None
        config = self.config.paper_config or PaperVenueConfig()
        self._venue_task = asyncio.create_task(
            run_paper_venue(self.url, config, stop=self._venue_stop, auth=self.credentials("venue")), name="paper-venue"
        )
        # Ready when it answers a ping on its control subject.
        for _ in range(200):
            if self._venue_task.done():
                self._venue_task.result()  # raises what stopped it
                raise RuntimeError("paper venue stopped during start-up")
            try:
                await self.bus.nc.request(f"venue.{config.venue}.ctl.ping", b"{}", timeout=0.05)
                return
            except Exception:  # not subscribed yet
                await asyncio.sleep(0.02)
        raise TimeoutError("paper venue did not answer its ping within 5 s")

    def credentials(self, user: str) -> Any:
        """The `bus.connect.ClientAuth` of `user` when the system runs with users; None (no credentials, or the
        environment's) otherwise."""
        return self.auth.auth(user) if self.auth is not None else None

    @property
    def venue_pool(self) -> Any:
        return self._venues

    async def stop(self) -> None:
        """Drain: actors finish what they took and hand back partitions, then the venue and server stop."""
        if self.web is not None:
            try:
                await self.web.stop()
            except Exception as exc:  # the page failing to stop must not hide the rest of shutdown
                log.warning("web_stop_failed", error=repr(exc))
            self.web = None
        for host in reversed(list(self.hosts.values())):
            await host.stop()
        self.hosts.clear()
        for pool in self._actor_venues:
            await pool.close()
        self._actor_venues.clear()
        for bus in self._actor_buses:
            await bus.close()
        self._actor_buses.clear()
        if self._venues is not None:
            await self._venues.close()
        if self._venue_task is not None:
            self._venue_stop.set()
            try:
                await asyncio.wait_for(self._venue_task, 10)
            except Exception as exc:  # the venue failing to stop must not hide the rest of shutdown
                log.warning("paper_venue_stop_failed", error=repr(exc))
        if self.bus is not None:
            await self.bus.close()
        if self.server is not None:
            await self.server.stop()
            self.server.cleanup()
        log.info("system_stopped")

    async def __aenter__(self) -> System:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
