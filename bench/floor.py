"""The floor of the latency benchmark: bare nats-py chains with the hops of the market choreography.

The critical path of a market intent up to `OrderPlaced`, read off the actors (bus/runtime.py,
actors/supervisor.py, actors/pricer.py, actors/placer.py):

    client   publish SubmitIntent (JetStream, ack awaited)
    S        <- SubmitIntent   KV create (intent guard), publish IntentAccepted + PriceRequested (sent
                               together, acks awaited together), KV create (state), ack
    P        <- PriceRequested publish PriceQuoted, ack
    S        <- PriceQuoted    publish PlaceOrder, KV update (state), ack
    PL       <- PlaceOrder     venue request/reply (create_order), publish OrderPlaced, KV create, ack
    client   <- OrderPlaced    (core subscription)

Two bare chains with exactly these hops, no execbus code in them:

* `core`: plain NATS publish/subscribe for each hop plus the venue request/reply — what NATS itself
  allows with no durability: 5 one-way hops and 1 round trip.
* `js`: the same hops as JetStream publishes (ack awaited) delivered by durable push consumers with
  explicit acks, plus a KV write per step — at least the durability execbus has. (execbus holds its state
  writes back up to `flush_delay_s` and writes an intent's burst of steps once, after the publishes; the
  floor writes after every step, also after its publishes, so the writes stay off both critical paths.)

Plus the raw primitives between the benchmark process and the relays' process: request/reply round trip
and one-way publish -> subscribe latency (CLOCK_MONOTONIC is shared by all processes on Linux).
`serve` runs the relay side (in a `bench.worker` process); `FloorClient` runs the client side.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType, StreamConfig

__all__ = ["FloorClient", "ROLES", "ensure_layout", "serve"]

ROLES = ("S", "P", "PL", "V", "echo")
STREAM = "BENCH_FLOOR"
BUCKET = "bench_floor"
PAYLOAD = b"x" * 360
"""About the size of an encoded PlaceOrder / OrderPlaced."""


async def ensure_layout(nc: Client) -> None:
    """The stream and KV bucket of the JetStream chain (file storage, like EXEC and the state bucket)."""
    js = nc.jetstream()
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(name=STREAM, subjects=["flj.>"], storage=StorageType.FILE,
                                         duplicate_window=120.0))
    try:
        await js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, storage=StorageType.FILE))


async def serve(nc: Client, roles: list[str]) -> list[Any]:
    """Start the relays for `roles` on `nc`; returns the subscriptions."""
    js = nc.jetstream()
    kv = await js.key_value(BUCKET) if {"S", "PL"} & set(roles) else None
    subs: list[Any] = []
    revisions: dict[str, int] = {}

    def tail(msg: Msg) -> str:
        return msg.subject.rsplit(".", 1)[1]

    if "S" in roles:
        async def s_core(msg: Msg) -> None:
            step = msg.subject.split(".")[2]
            await nc.publish(f"flc.p.req.{tail(msg)}" if step == "submit" else f"flc.pl.place.{tail(msg)}", PAYLOAD)

        async def s_js(msg: Msg) -> None:
            assert kv is not None
            i, step = tail(msg), msg.subject.split(".")[2]
            if step == "submit":
                await kv.create(f"claim.{i}", b"1")
                # Both out at once, acks awaited together (nats-py's publish_async): the way execbus sends.
                acks = [await js.publish_async(f"flj.o.accepted.{i}", PAYLOAD),
                        await js.publish_async(f"flj.p.req.{i}", PAYLOAD)]
                await asyncio.gather(*acks)
                revisions[i] = await kv.create(f"s.{i}", PAYLOAD)
            else:
                await js.publish(f"flj.pl.place.{i}", PAYLOAD)
                await kv.update(f"s.{i}", PAYLOAD, last=revisions.pop(i))
            await msg.ack()

        subs.append(await nc.subscribe("flc.s.>", cb=s_core))
        subs.append(await js.subscribe("flj.s.>", durable="floor_s", cb=s_js, manual_ack=True,
                                       deliver_policy=DeliverPolicy.NEW))
    if "P" in roles:
        async def p_core(msg: Msg) -> None:
            await nc.publish(f"flc.s.quoted.{tail(msg)}", PAYLOAD)

        async def p_js(msg: Msg) -> None:
            await js.publish(f"flj.s.quoted.{tail(msg)}", PAYLOAD)
            await msg.ack()

        subs.append(await nc.subscribe("flc.p.>", cb=p_core))
        subs.append(await js.subscribe("flj.p.>", durable="floor_p", cb=p_js, manual_ack=True,
                                       deliver_policy=DeliverPolicy.NEW))
    if "PL" in roles:
        async def pl_core(msg: Msg) -> None:
            await nc.request("flc.v.create", PAYLOAD, timeout=5)
            await nc.publish(f"flc.c.placed.{tail(msg)}", PAYLOAD)

        async def pl_js(msg: Msg) -> None:
            assert kv is not None
            i = tail(msg)
            await nc.request("flc.v.create", PAYLOAD, timeout=5)
            await js.publish(f"flj.c.placed.{i}", PAYLOAD)
            await kv.create(f"pl.{i}", PAYLOAD)
            await msg.ack()

        subs.append(await nc.subscribe("flc.pl.>", cb=pl_core))
        subs.append(await js.subscribe("flj.pl.>", durable="floor_pl", cb=pl_js, manual_ack=True,
                                       deliver_policy=DeliverPolicy.NEW))
    if "V" in roles:
        async def venue(msg: Msg) -> None:
            await msg.respond(PAYLOAD)

        subs.append(await nc.subscribe("flc.v.create", cb=venue))
    if "echo" in roles:
        one_way: list[int] = []

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        async def arrive(msg: Msg) -> None:
            one_way.append(time.monotonic_ns() - int(msg.data))

        async def stats(msg: Msg) -> None:
            data, one_way[:] = list(one_way), []
            await msg.respond(",".join(map(str, data)).encode())

        subs.append(await nc.subscribe("fl.echo", cb=echo))
        subs.append(await nc.subscribe("fl.ow", cb=arrive))
        subs.append(await nc.subscribe("fl.ow.stats", cb=stats))
    await nc.flush()
    return subs


class FloorClient:
    """The client side: one chain run at a time, sequentially, each sample in milliseconds."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._n = 0

    async def start(self) -> FloorClient:
        async def placed(msg: Msg) -> None:
            now = time.monotonic_ns()
            fut = self._waiting.pop(msg.subject.rsplit(".", 1)[1], None)
            if fut is not None and not fut.done():
                fut.set_result(now)

        await self.nc.subscribe("flc.c.>", cb=placed)
        await self.nc.subscribe("flj.c.>", cb=placed)
        await self.nc.flush()
        return self

    async def chain(self, mode: str) -> float:
        """One intent through the bare chain (`core` or `js`); ms from before the submit to `placed`."""
        self._n += 1
        i = f"{mode}{self._n}"
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        t0 = time.monotonic_ns()
        if mode == "core":
            await self.nc.publish(f"flc.s.submit.{i}", PAYLOAD)
        else:
            await self.js.publish(f"flj.s.submit.{i}", PAYLOAD)
        done = await asyncio.wait_for(fut, 10)
        return (done - t0) / 1e6

    async def rtt(self) -> float:
        t0 = time.monotonic_ns()
        await self.nc.request("fl.echo", PAYLOAD, timeout=5)
        return (time.monotonic_ns() - t0) / 1e6

    async def one_way(self) -> None:
        """Send one stamped message; its latency is read back with `one_way_samples`."""
        await self.nc.publish("fl.ow", str(time.monotonic_ns()).encode())
        await self.nc.flush()

    async def one_way_samples(self) -> list[float]:
        reply = await self.nc.request("fl.ow.stats", b"", timeout=5)
        return [int(x) / 1e6 for x in reply.data.decode().split(",") if x]
