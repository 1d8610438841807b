"""A streaming pull consumer: messages are handed over the moment they arrive.

nats-py's `fetch(batch=n)` waits until the whole batch is in or the timeout passes, which puts the timeout
into the latency of every message on a quiet system. This keeps pull requests outstanding instead (the way
nats.go's `Consume` does): a new request is sent when half the credit is used, and a pull request that
expires returns its unused credit (`Nats-Pending-Messages`).

The credit is back-pressure, too: a message counts against it until the host says it is done with it
(`in_hand`), not only until it arrives. Refilling as messages arrive would let an overloaded host pull the
stream's whole backlog into its event loop, where every turn of the loop then waits on thousands of ready
handlers, and the host's own lease renewals come too late (steps skipped, partitions moving, the work
redone elsewhere). Bounded, what the host cannot take yet waits in the log, where it is safe.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import NamedTuple

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["PullStream", "AckInfo", "ack_info"]

log = structlog.get_logger("execbus.bus")

_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"


class AckInfo(NamedTuple):
    delivered: int
    """How many times the server has delivered the message (1 = the first time)."""
    stream_seq: int
    timestamp_ns: int
    pending: int


def ack_info(reply: str | None) -> AckInfo:
    """What a JetStream message's ack subject says about it, in the v1 form
    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` or the v2 form with domain and
    account hash tokens after `ACK`. nats-py's `Msg.metadata` parses every field into objects; this runs for
    every message, so it only splits. A message without one (not from JetStream) reads as a first delivery."""
    tokens = (reply or "").split(".")
    if len(tokens) == 9:
        return AckInfo(int(tokens[4]), int(tokens[5]), int(tokens[7]), int(tokens[8]))
    if len(tokens) >= 11:
        return AckInfo(int(tokens[6]), int(tokens[7]), int(tokens[9]), int(tokens[10]))
    return AckInfo(1, 0, 0, 0)


class PullStream:
    """Pull from one durable consumer and call `on_message` (synchronously, in arrival order) for each."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        on_message: Callable[[Msg], None],
        *,
        batch: int = 32,
        expires_s: float = 5.0,
        heartbeat_s: float = 1.0,
        in_hand: Callable[[], int] | None = None,
    ) -> None:
        """`in_hand`: how many of this stream's messages the host holds and has not finished; credit plus
        that never exceeds `batch`. The host calls `refill` when it has finished enough of them."""
        self._nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._on_message = on_message
        self._batch = batch
        self._expires_ns = int(expires_s * 1e9)
        self._heartbeat_s = heartbeat_s
        self._in_hand = in_hand or (lambda: 0)
        self._pending = 0
        self._refilling: asyncio.Task[None] | None = None
        self._last_seen = time.monotonic()
        self._inbox = nc.new_inbox()
        self._sub = None
        self._watchdog: asyncio.Task[None] | None = None
        self.durable = durable

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_raw)
        await self._pull(self._batch - self._in_hand())
        self._watchdog = asyncio.create_task(self._watch(), name=f"pull-watchdog-{self.durable}")

    async def stop(self) -> None:
        sub, self._sub = self._sub, None  # (no refill asks for more from here on)
        if self._refilling is not None:
            self._refilling.cancel()
            await asyncio.gather(self._refilling, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            try:
                await self._watchdog
            except asyncio.CancelledError:
                pass
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # connection already closed: nothing left to unsubscribe
                pass

    async def _pull(self, n: int) -> None:
        if n <= 0 or self._nc.is_closed or self._sub is None:
            return
        self._pending += n
        request = {
            "batch": n,
            "expires": self._expires_ns,
            "idle_heartbeat": int(self._heartbeat_s * 1e9),
        }
        await self._nc.publish(self._api, json.dumps(request).encode(), reply=self._inbox)

    async def _on_raw(self, msg: Msg) -> None:
        self._last_seen = time.monotonic()
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None:
            self._pending = max(self._pending - 1, 0)  # (after the watchdog's reset, late ones count nothing)
            self._on_message(msg)
        elif status == "100":
            return  # idle heartbeat: the request is alive
        else:
            # 404/408: the request ended (no messages, expired); 409: the server cut it short.
            unused = msg.headers.get(_PENDING) if msg.headers else None
            self._pending -= int(unused) if unused and unused.isdigit() else self._pending
            self._pending = max(self._pending, 0)
            if status == "409":
                log.debug("pull_request_ended", durable=self.durable, reason=msg.headers.get("Description"))
        await self._top_up()

    def _room(self) -> int:
        """Credit to ask for: none until credit plus what the host holds has fallen to half the batch."""
        room = self._batch - self._pending - self._in_hand()
        return room if room >= self._batch - self._batch // 2 else 0

    async def _top_up(self) -> None:
        if room := self._room():
            await self._pull(room)

    def refill(self) -> None:
        """The host finished some of our messages: ask for more if that leaves room (one request at a time)."""
        if self._refilling is None and self._sub is not None and self._room():
            self._refilling = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        try:
            if self._sub is not None:
                await self._top_up()
        except Exception as exc:  # disconnected: the watchdog asks again
            log.debug("pull_refill_failed", durable=self.durable, error=repr(exc))
        finally:
            self._refilling = None

    async def _watch(self) -> None:
        """After a reconnect the server has forgotten our requests; silence longer than three heartbeats
        means start over with full credit."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if time.monotonic() - self._last_seen > 3 * self._heartbeat_s and not self._nc.is_closed:
                self._pending = 0
                self._last_seen = time.monotonic()
                try:
                    await self._pull(self._batch - self._in_hand())
                except Exception as exc:  # disconnected: try again next beat
                    log.debug("pull_retry_failed", durable=self.durable, error=repr(exc))
