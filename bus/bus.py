"""The typed bus: publish a message and its subject and headers follow from it; subscribe and get messages.

This is the only place (with the runtime) that calls nats-py. Publishing goes through JetStream so every
message is in the log and a repeated `msg_id` is stored once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

from bus.acks import AckMux
from bus.connect import ADMIN_USER, ClientAuth, connect
from bus.controls import ControlStore
from bus.settings import BusSettings
from bus.streams import Buckets, ensure_layout
from messages import DeadLetter, InvalidMessage, Message, decode, encode, headers_for, subjects

__all__ = ["Bus", "subject_of"]

log = structlog.get_logger("execbus.bus")
T = TypeVar("T", bound=msgspec.Struct)


def subject_of(msg: Message) -> str:
    return subjects.subject(msg.kind, msg.venue, msg.symbol, msg.intent_id)


class Bus:
    """One NATS connection, its JetStream context and the execbus layout on it."""

    def __init__(self, nc: Client, settings: BusSettings) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings
        self._buckets: Buckets | None = None
        self.acks = AckMux(nc)
        """Every JetStream write of this process (messages and actor state) goes through here."""
        self.activity: Any = None
        """Set by a simulation (bus/ops/sim.py) to count messages in flight; None otherwise."""
        self._controls: ControlStore | None = None

    @classmethod
    async def connect(
        cls, url: str, settings: BusSettings | None = None, *, name: str = "execbus", auth: ClientAuth | None = None,
        role: str | None = None,
    ) -> Bus:
        """`url`: one server or a comma-separated list; `auth`: who connects (default: the environment's
        credentials for `role`, see `bus.connect.ClientAuth`)."""
        bus = cls(await connect(url, name=name, auth=auth, role=role), settings or BusSettings.from_env())
        try:
            await bus.setup()
        except BaseException:  # (e.g. a layout this user may not change): no connection left reconnecting forever
            await bus.acks.stop()
            await bus.nc.close()
            raise
        return bus

    async def setup(self) -> Buckets:
        if self._buckets is None:
            await self.acks.start()
            user = self.nc.options.get("user")
            # Only a user that may publish anywhere probes a stream it created (see `ensure_layout`).
            self._buckets = await ensure_layout(self.js, self.settings, probe=not user or user == ADMIN_USER)
            await self._lease_ttl_of_the_bucket()
        return self._buckets

    async def _lease_ttl_of_the_bucket(self) -> None:
        """The lease bucket's key lifetime is the lease TTL every replica must use: one that trusted its lease
        for 80 % of a longer TTL than the bucket keeps the key would share its partition with the next owner.
        Whoever created the bucket set it; a process configured otherwise follows the bucket, saying so."""
        info = await self.js.stream_info(f"KV_{self.settings.lease_bucket}")
        kept = info.config.max_age or 0.0
        if kept and abs(kept - self.settings.lease_ttl_s) > 1e-3:
            log.warning("lease_ttl_from_bucket", configured_s=self.settings.lease_ttl_s, bucket_s=kept)
            self.settings = msgspec.structs.replace(self.settings, lease_ttl_s=kept)

    async def controls(self) -> ControlStore:
        """The controls bucket's store (trading states, risk limits, ...), watching from the first call on."""
        if self._controls is None:
            self._controls = ControlStore(self.buckets.controls, self.acks)
            await self._controls.start()
        return self._controls

    @property
    def shape(self) -> subjects.Shape:
        """The `EXEC` stream's shape (where it stores the partition token), known after `setup`."""
        return self._buckets.shape if self._buckets is not None else subjects.CURRENT_SHAPE

    @property
    def buckets(self) -> Buckets:
        assert self._buckets is not None, "call setup() first"
        return self._buckets

    async def publish(self, msg: Message) -> PubAck:
        """Into the log; returns once JetStream stored it (or recognised it as a duplicate)."""
        return await (await self.send(msg))

    async def send(self, msg: Message) -> asyncio.Future[PubAck]:
        """Into the log without waiting: the message is on its way when this returns, and the future
        resolves once JetStream stored it. Messages sent one after another are stored in that order."""
        if not msg.ts_init:
            msg = msgspec.structs.replace(msg, ts_init=time.time_ns())
        future = await self.acks.send(subject_of(msg), encode(msg), headers_for(msg))
        if self.activity is not None:
            self._count(future, msg.kind)
        return future

    def _count(self, future: asyncio.Future[PubAck], kind: str) -> None:
        """For a simulation's quiescence: busy until JetStream answered, then expected by every consumer."""
        activity = self.activity
        activity.begin(delivered=False)

        def done(f: asyncio.Future[PubAck]) -> None:
            if not f.cancelled() and f.exception() is None and not f.result().duplicate:
                activity.published(kind)
            activity.end()

        future.add_done_callback(done)

    async def dead_letter(self, actor: str, subject: str, reason: str, raw: bytes) -> None:
        letter = DeadLetter(
            actor=actor,
            subject=subject,
            reason=reason,
            raw=raw.decode("utf-8", errors="replace"),
            ts_event=time.time_ns(),
        )
        await self.js.publish(subjects.dead_letter(actor), encode(letter))
        log.warning("dead_lettered", actor=actor, subject=subject, reason=reason)

    async def subscribe(
        self, pattern: str, handler: Callable[[Message], Awaitable[None]]
    ) -> Subscription:
        """Live (core NATS) subscription to data-plane subjects, decoded; for tools and monitors.
        Undecodable payloads are logged and skipped: a monitor must not die on someone else's bad input."""

        async def on_msg(raw: Msg) -> None:
            try:
                message = decode(raw.data)
            except InvalidMessage as exc:
                log.warning("undecodable_message", subject=raw.subject, error=str(exc))
                return
            await handler(message)

        return await self.nc.subscribe(pattern, cb=on_msg)

    async def request(self, subject: str, payload: msgspec.Struct, reply_type: type[T], timeout: float = 2.0) -> T:
        reply = await self.nc.request(subject, encode(payload), timeout=timeout)
        return msgspec.json.decode(reply.data, type=reply_type)

    async def close(self) -> None:
        if self._controls is not None:
            await self._controls.stop()
        await self.acks.stop()
        if not self.nc.is_closed:
            await self.nc.drain()

    def raw(self) -> Client:
        """The connection itself, for the runtime and control-plane services."""
        return self.nc

    def __repr__(self) -> str:
        return f"Bus({self.nc.connected_url!r})"

    def __getstate__(self) -> Any:  # pragma: no cover - a bus is not picklable
        raise TypeError("Bus cannot be pickled")
