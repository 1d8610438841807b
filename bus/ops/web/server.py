"""`execbus web --nats URL --http PORT [--host ADDR]`, and `execbus up --http PORT` beside the system: the
executions as a web page, served by execbus itself (aiohttp). The app itself (routes, the hub that follows
the log) is `bus.ops.web.app`, imported only when a server starts: `execbus` loads this module for every
command (the `execbus.commands` entry point `web`), so it stays light.

`WebServer` is the app on a port with its own NATS connection (or a given bus); `command` adds `execbus web`,
which runs one until SIGINT/SIGTERM (a second signal exits at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import structlog

from bus.ops.web.options import DEFAULT_LOOKBACK_S

__all__ = ["WebServer", "command", "DEFAULT_LOOKBACK_S"]

log = structlog.get_logger("execbus.ops.web")


class WebServer:
    """The web app on its own NATS connection (or a given bus): `await WebServer(nats_url=..., port=0).start()`,
    then `.url`; `await .stop()`."""

    def __init__(self, bus: Any = None, *, nats_url: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, lookback_s: float | None = DEFAULT_LOOKBACK_S, auth: Any = None) -> None:
        if bus is None and not nats_url:
            raise ValueError("WebServer needs a bus or a NATS URL")
        self._own_bus = bus is None
        self.bus = bus
        self.nats_url = nats_url
        self.auth = auth
        """Who the page's connection is (`bus.connect.ClientAuth`); None: the environment's `monitor` user."""
        self.host = host
        self.port = port
        self.lookback_s = lookback_s
        self.hub: Any = None
        self._runner: Any = None
        self.url = ""

    async def start(self) -> WebServer:
        from aiohttp import web

        from bus.bus import Bus
        from bus.ops.web.app import Hub, make_app

        if self.bus is None:
            assert self.nats_url is not None
            self.bus = await Bus.connect(self.nats_url, name="execbus-web", auth=self.auth, role="monitor")
        self.hub = await Hub(self.bus, lookback_s=self.lookback_s).start()
        self._runner = web.AppRunner(make_app(self.bus, self.hub), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self.stop()
            raise
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        log.info("web_started", url=self.url)
        return self

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()  # ends every event stream: the runner's shutdown does not wait on them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_bus and self.bus is not None:
            await self.bus.close()
            self.bus = None
        log.info("web_stopped")

    async def __aenter__(self) -> WebServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- `execbus web` ------------------------------------------------------------------------------------------


def command(sub: Any, name: str = "web") -> argparse.ArgumentParser:
    """Add `execbus web` to the CLI's subcommands (the `execbus.commands` entry point `web`)."""
    p = sub.add_parser(name, help="serve the executions as a web page (live board, one page per execution)",
                       description="Serve the live list of executions, the fill tape and a page per execution "
                                   "(chart and message timeline) from a running system's message log.")
    p.add_argument("--nats", default=None, help="the system's NATS server (default $NATS_URL or nats://127.0.0.1:4222)")
    p.add_argument("--http", type=int, default=8080, help="HTTP port (default 8080; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--lookback", type=float, default=DEFAULT_LOOKBACK_S, metavar="SECONDS",
                   help=f"how much of the log the board reads back at start (default {DEFAULT_LOOKBACK_S:g})")
    p.set_defaults(run=_command)
    return p


async def _first(aw: Any, stop: asyncio.Event) -> Any:
    """`await aw` unless `stop` is set first (then None, `aw` cancelled)."""
    task = asyncio.ensure_future(aw)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


def _install_stop(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    def on_signal() -> None:
        if stop.is_set():  # a second signal: out now
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


async def _command(args: argparse.Namespace) -> int:
    url = args.nats or os.environ.get("NATS_URL") or "nats://127.0.0.1:4222"
    stop = asyncio.Event()
    remove = _install_stop(asyncio.get_running_loop(), stop)
    server = WebServer(nats_url=url, host=args.host, port=args.http, lookback_s=args.lookback)
    try:
        try:
            started = await _first(server.start(), stop)  # a server that is not there is retried until a stop
        except OSError as exc:
            print(f"execbus web: cannot listen on {args.host}:{args.http}: {exc}", file=sys.stderr)
            return 1
        if started is None:
            return 0
        print(f"execbus web: {server.url}  (log of {url})", flush=True)
        await stop.wait()
        return 0
    finally:
        try:
            await asyncio.wait_for(server.stop(), 3.0)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001
            print(f"execbus web: shutdown cut short: {exc!r}", file=sys.stderr)
        remove()

