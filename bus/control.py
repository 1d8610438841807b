"""The control plane: each actor replica is a `nats.micro` service, so `nats micro ls`, `nats micro info`
and `nats micro stats` show the running system, and `execbus.ctl.<actor>.status` answers with the
replica's partitions, in-flight intents and counters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from nats import micro
from nats.micro.request import Request
from nats.micro.service import Service

from messages import encode, subjects

if TYPE_CHECKING:
    from bus.bus import Bus

__all__ = ["ControlService", "Endpoint", "VERSION"]

VERSION = "0.1.0"
Endpoint = Callable[[bytes], Awaitable[bytes]]
log = structlog.get_logger("execbus.bus.control")


class ControlService:
    def __init__(
        self,
        bus: Bus,
        actor: str,
        status: Callable[[], dict[str, Any]],
        extra: dict[str, Endpoint] | None = None,
    ) -> None:
        self._bus = bus
        self._actor = actor
        self._status = status
        self._extra = extra or {}
        self._service: Service | None = None

    async def start(self) -> None:
        self._service = await micro.add_service(
            self._bus.nc,
            name=f"execbus-{self._actor.replace('_', '-')}",
            version=VERSION,
            description=f"execbus {self._actor} actor",
            metadata={"actor": self._actor},
        )

        async def status(request: Request) -> None:
            await request.respond(encode(self._status()))

        await self._service.add_endpoint(
            name="status", subject=subjects.control(self._actor, "status"), handler=status
        )
        for name, endpoint in self._extra.items():
            await self._service.add_endpoint(
                name=name, subject=subjects.control(self._actor, name), handler=_wrap(endpoint)
            )

    async def stop(self) -> None:
        if self._service is not None:
            try:
                await self._service.stop()
            except Exception as exc:  # connection already gone at shutdown
                log.debug("control_stop_failed", error=repr(exc))
            self._service = None


def _wrap(endpoint: Endpoint) -> Callable[[Request], Awaitable[None]]:
    async def handler(request: Request) -> None:
        try:
            await request.respond(await endpoint(request.data))
        except Exception as exc:
            await request.respond_error("500", repr(exc))

    return handler
