"""Connecting to NATS: one place that sets reconnect behaviour and logs connection events."""

from __future__ import annotations

import os

import nats
import structlog
from nats.aio.client import Client

__all__ = ["connect", "default_url"]

log = structlog.get_logger("execbus.bus")


def default_url() -> str | None:
    return os.environ.get("NATS_URL")


async def connect(url: str, *, name: str = "execbus") -> Client:
    """Connect with unlimited reconnects: a restarted nats-server must not end an actor."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=repr(exc), connection=name)

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
        reconnect_time_wait=0.25,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )
    client.append(nc)
    return nc
