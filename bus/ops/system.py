"""The composition root: starts what `execbus up` (and `demo`, and the end-to-end tests) run in one process —
an embedded nats-server unless a URL is given, the paper venue service, and one replica of each actor.

Actors are loaded by name from `actors.<module>` so the bus knows them only as a registry of factories;
each gets the venue pool and its settings through its constructor.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from bus.bus import Bus
from bus.connect import ClientAuth
from bus.ops.actors import ACTORS, USES_VENUES, build_actor
from messages import encode
from bus.clock import Clock, WallClock
from bus.runtime import ActorHost
from bus.ops.auth import write_private
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
    tls_dir: str | None = None
    """TLS between clients and the embedded server(s), and between cluster nodes: a CA and a server certificate
    are generated here for the run (kept while valid; bus/tls.py). None: plain text."""
    tls_ca: tuple[str, str] | None = None
    """(certificate, key) of one's own CA to sign the server certificate with, instead of a generated one."""
    cluster: int = 1
    """Embedded servers: 1 is one nats-server; 3 is a JetStream cluster on loopback whose stream and buckets
    have `settings.replicas` copies (3 unless the settings say otherwise)."""


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
        self.tls: Any = None
        """The `bus.tls.TlsFiles` when `config.tls_dir` is set."""
        self.cluster: Any = None
        """The `bus.cluster.EmbeddedCluster` when `config.cluster` > 1."""
        self.settings: BusSettings | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        """The `bus.ops.auth.AuthDir` when `config.auth_dir` is set."""
        self._actor_buses: list[Bus] = []
        self._actor_venues: list[Any] = []
        self.web: Any = None
        """The `bus.ops.web.WebServer` when `config.http_port` is set (its `.url` once started)."""
        self.url = ""

    async def start(self) -> System:
        config = self.config
        settings = config.settings or BusSettings.from_env()
        if config.cluster > 1 and settings.replicas == 1 and not config.nats_url:
            settings = msgspec.structs.replace(settings, replicas=min(3, config.cluster))
        self.settings = settings
        if config.auth_dir:
            from bus.ops.auth import AuthDir, users, write_auth_dir

            # Joining a server: its users are whatever its config says, so read ours and write nothing.
            self.auth = AuthDir(Path(config.auth_dir), users(settings)) if config.nats_url else write_auth_dir(
                config.auth_dir, settings)
        if config.tls_dir:
            from bus import tls

            ca_cert, ca_key = config.tls_ca or (None, None)
            self.tls = tls.ensure(config.tls_dir, ca_cert=ca_cert, ca_key=ca_key)
        if config.nats_url:
            self.url = config.nats_url
        else:
            await self._start_servers(config)
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
        """The `bus.connect.ClientAuth` of `user` (with the run's CA under TLS) when the system runs with users
        or TLS; None (the environment's credentials) otherwise."""
        ca = str(self.tls.ca_cert) if self.tls is not None else None
        if self.auth is not None:
            return self.auth.auth(user, ca_file=ca)
        return ClientAuth(ca_file=ca) if ca else None

    async def _start_servers(self, config: SystemConfig) -> None:
        """One embedded nats-server, or a cluster of them, configured with the users and TLS of the run. The
        configuration holds the passwords: it is written mode 0600 and handed to the server as a file, never
        on its command line."""
        from bus import tls

        named = config.store_dir or os.environ.get("EXECBUS_STORE")
        if named is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="execbus-")
        store = Path(named or self._tmp.name)  # type: ignore[union-attr]
        extra = self.auth.config.read_text() if self.auth is not None else ""
        if self.tls is not None:
            extra += "\n" + tls.server_block(self.tls)
        if config.cluster > 1:
            from bus.cluster import EmbeddedCluster

            self.cluster = EmbeddedCluster(
                config.cluster, store_dir=store / "cluster", config_extra=extra,
                cluster_extra=tls.cluster_block(self.tls) if self.tls is not None else "",
                route_password=self.auth.route_password() if self.auth is not None else None,
            )
            await self.cluster.start()
            self.url = self.cluster.url
            return
        config_file = None
        if extra:
            config_file = store / "execbus-server.conf"
            store.mkdir(parents=True, exist_ok=True)
            write_private(config_file, extra)
        # A system killed outright (SIGKILL) takes its server along: never a server left holding the port.
        self.server = EmbeddedNats(store_dir=store, port=config.port, config_file=str(config_file) if config_file else None,
                                   die_with_parent=True)
        await self.server.start()
        self.url = self.server.url

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
        if self.cluster is not None:
            await self.cluster.stop()
            self.cluster.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        log.info("system_stopped")

    async def __aenter__(self) -> System:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
