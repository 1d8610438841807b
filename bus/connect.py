"""Connecting to NATS: one place that sets reconnect behaviour and logs connection events.

A server that is not there (yet, or any more) is retried forever, every `RECONNECT_WAIT_S`: a restarted
nats-server must not end an actor. What ends the retrying is the caller cancelling the connect (the CLI does
on SIGTERM/SIGINT, see `bus.ops.cli`) or closing the connection. Repeated errors are logged once per
`ERROR_LOG_INTERVAL_S` with how many were suppressed, not four times a second for as long as the server is away.
"""

from __future__ import annotations

import os
import time

import nats
import structlog
from nats.aio.client import Client

__all__ = ["connect", "default_url", "RECONNECT_WAIT_S", "ERROR_LOG_INTERVAL_S"]

log = structlog.get_logger("execbus.bus")

RECONNECT_WAIT_S = 0.25
ERROR_LOG_INTERVAL_S = 30.0


def default_url() -> str | None:
    return os.environ.get("NATS_URL")


class _ErrorLog:
    """Logs an error the first time it is seen, then at most once per interval with the count in between."""

    def __init__(self, name: str, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self.name = name
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, exc: BaseException) -> None:
        key = repr(exc)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        repeats = self._suppressed.pop(key, 0)
        if repeats:
            log.warning("nats_error", error=key, connection=self.name, repeated=repeats)
        else:
            log.warning("nats_error", error=key, connection=self.name)


async def connect(url: str, *, name: str = "execbus") -> Client:
    """Connect with unlimited reconnects (and unlimited retries of the first connect); cancel to give up."""
    errors = _ErrorLog(name)

    async def on_error(exc: Exception) -> None:
        errors(exc)

    client: list[Client] = []

    async def on_disconnect() -> None:
        closing = bool(client) and (client[0].is_closed or client[0].is_draining)
        (log.debug if closing else log.warning)("nats_disconnected", connection=name)

    async def on_reconnect() -> None:
        log.info("nats_reconnected", connection=name)

    nc = await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )
    client.append(nc)
    return nc
