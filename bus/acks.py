"""JetStream publishes whose acknowledgements are collected later: send now, await the ack when it matters.

nats-py's `js.publish` is a request: a future, an `asyncio.wait_for` and one round trip awaited before the
next publish can start. A handler that publishes three messages and saves its state paid four round trips
in a row. Here every publish goes out at once with a reply subject on one wildcard inbox, and returns a
future for its ack. The runtime awaits all of a step's futures before it saves state and acknowledges the
input, so what is durable, and when, does not change; only the waiting is overlapped.

Timeouts are swept in one periodic task instead of a timer per publish.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

__all__ = ["AckMux", "PublishTimeout"]


class PublishTimeout(TimeoutError):
    """No acknowledgement from JetStream in time: the message may or may not be stored."""


class _AckBody(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: dict[str, Any] | None = None


_decode_ack = msgspec.json.Decoder(_AckBody).decode


class AckMux:
    """Publishes to JetStream over one connection, acks routed back by token on a single subscription."""

    def __init__(self, nc: Client, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._prefix = ""
        self._next = 0
        self._waiting: dict[str, asyncio.Future[PubAck]] = {}
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._sub is not None:
            return
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        self._sweeper = asyncio.create_task(self._sweep(), name="ack-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection is already closed
                pass
            self._sub = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(PublishTimeout("connection closed before the ack came"))
        self._waiting.clear()

    async def send(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> asyncio.Future[PubAck]:
        """Hand the message to the connection now; the returned future resolves with JetStream's ack."""
        if self._sub is None:
            await self.start()
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        self._deadlines.append((time.monotonic() + self._timeout_s, token))
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except Exception:
            self._waiting.pop(token, None)
            raise
        return future

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> PubAck:
        return await (await self.send(subject, payload, headers))

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if future is None or future.done():
            return  # timed out already
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            body = _decode_ack(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(nats.js.errors.Error(f"undecodable JetStream ack: {exc}"))
            return
        if body.error is not None:
            future.set_exception(_api_error(body.error))
        else:
            future.set_result(PubAck(stream=body.stream, seq=body.seq, domain=body.domain, duplicate=body.duplicate))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self._timeout_s / 4))
            now = time.monotonic()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, token = self._deadlines.popleft()
                future = self._waiting.pop(token, None)
                if future is not None and not future.done():
                    future.set_exception(PublishTimeout(f"no JetStream ack within {self._timeout_s} s"))
            # Entries whose ack already came are skipped when they reach the head; bound the queue anyway.
            if len(self._deadlines) > 4 * len(self._waiting) + 1024:
                self._deadlines = collections.deque(d for d in self._deadlines if d[1] in self._waiting)


def _api_error(error: dict[str, Any]) -> Exception:
    """nats-py's own exception for a JetStream error reply (its `from_error` raises rather than returns)."""
    try:
        nats.js.errors.APIError.from_error(error)
    except nats.js.errors.APIError as exc:
        if exc.err_code == 10071:  # wrong last sequence: what KV update/create report as a CAS failure
            return nats.js.errors.KeyWrongLastSequenceError(description=exc.description)
        return exc
    return nats.js.errors.APIError(**error)
