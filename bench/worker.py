"""A benchmark worker process: some actors, and/or the paper venue, and/or floor relays, on one NATS URL.

    python -m bench.worker --nats URL --id W1 [--actors all|supervisor,pricer,...] [--options JSON]
                           [--venue none|stepped|realtime] [--speed 1.0] [--floor S,P,PL,V,echo]

It is `execbus up` / `execbus actor NAME` / `execbus venue paper` with what a benchmark needs on top:
actor constructor options (`--options '{"reconciler": {"use_streams": false}}'`), a step-driven venue,
the wall-clock (CLOCK_MONOTONIC) time of every venue fill, and a control subject `bench.w.<id>.<cmd>`:

    status         partitions held and counters of each actor hosted here
    fills          {clientOrderId: [monotonic_ns, time_ns]} of the first fill of each order (then cleared)
    profile_start  start cProfile in this process
    profile_stop   stop it and dump the stats to `path`
    stop           drain the actors and exit

It prints one JSON line `{"ready": true, "pid": ...}` on stdout once everything is serving.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import signal
import time
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg

__all__ = ["main"]

_json = msgspec.json.Encoder(decimal_format="string")


class FillStamps:
    """Venue listener: when each order first filled, in this process's clocks (called synchronously by
    the matching engine, before the event is even queued for publishing)."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[int, int]] = {}

    def __call__(self, subject: str, payload: dict[str, Any]) -> None:
        if ".evt.trades." in subject:
            cid = payload.get("clientOrderId") or ""
            if cid not in self.first:
                self.first[cid] = (time.monotonic_ns(), time.time_ns())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.worker")
    p.add_argument("--nats", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--actors", default="")
    p.add_argument("--options", default="{}", help="JSON: constructor options per actor")
    p.add_argument("--venue", default="none", choices=["none", "stepped", "realtime"])
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--history-limit", type=int, default=None, help="venue: closed orders/trades kept per account")
    p.add_argument("--floor", default="")
    return p.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    from bus.bus import Bus
    from bus.runtime import ActorHost
    from bus.ops.system import ACTORS, build_actor

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.nats, name=f"bench-worker-{args.id}", max_reconnect_attempts=-1)
    stamps = FillStamps()
    venue_parts: tuple[Any, Any, asyncio.Event, asyncio.Task[None]] | None = None
    if args.venue != "none":
        from venues.config import PaperVenueConfig
        from venues.service import PaperVenueService
        from venues.simulator import PaperVenue

        config = PaperVenueConfig(speed=0 if args.venue == "stepped" else args.speed)
        if args.history_limit is not None:
            config = msgspec.structs.replace(config, history_limit=args.history_limit)
        venue = await asyncio.to_thread(PaperVenue, config)
        venue.listeners.append(stamps)
        venue_nc = await nats.connect(args.nats, name=f"bench-venue-{args.id}", max_reconnect_attempts=-1)
        service = await PaperVenueService(venue_nc, venue).start()
        venue_stop = asyncio.Event()
        venue_parts = (venue_nc, service, venue_stop, asyncio.create_task(venue.run(venue_stop)))

    hosts: list[ActorHost] = []
    bus: Bus | None = None
    pool: Any = None
    names = list(ACTORS) if args.actors == "all" else [a for a in args.actors.split(",") if a]
    if names:
        from venues.gateway import VenuePool

        options = json.loads(args.options)
        bus = await Bus.connect(args.nats, name=f"bench-actors-{args.id}")
        pool = VenuePool(nats_url=args.nats)
        for name in names:
            hosts.append(await ActorHost(bus, build_actor(name, pool, options.get(name))).start())

    if args.floor:
        from bench.floor import serve

        await serve(nc, [r for r in args.floor.split(",") if r])

    profiler: list[cProfile.Profile] = []

    async def control(msg: Msg) -> None:
        cmd = msg.subject.rsplit(".", 1)[1]
        body = json.loads(msg.data) if msg.data else {}
        reply: Any = {"ok": True}
        if cmd == "status":
            reply = {
                "pid": os.getpid(),
                # the same document as the public `execbus.ctl.<actor>.status` endpoint, but from this
                # replica for sure (that endpoint is load-balanced over the replicas)
                "actors": {h.actor.name: h._status() for h in hosts},
            }
        elif cmd == "fills":
            reply, stamps.first = stamps.first, {}
        elif cmd == "profile_start":
            profiler[:] = [cProfile.Profile()]
            profiler[0].enable()
        elif cmd == "profile_stop" and profiler:
            profiler[0].disable()
            profiler[0].dump_stats(body["path"])
            profiler.clear()
        elif cmd == "settle":
            reply = {"settled_ms": round(await _settle() * 1000, 1)}
        elif cmd == "memory":
            reply = {"sites": _memory_sites(int(body.get("top", 30)))}
        elif cmd == "stop":
            stop.set()
        await msg.respond(_json.encode(reply))

    await nc.subscribe(f"bench.w.{args.id}.*", cb=control)
    await nc.flush()
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    await stop.wait()

    for host in reversed(hosts):
        await host.stop()
    if pool is not None:
        await pool.close()
    if bus is not None:
        await bus.close()
    if venue_parts is not None:
        venue_nc, service, venue_stop, task = venue_parts
        venue_stop.set()
        await task
        await service.stop()
        await venue_nc.drain()
    await nc.drain()


def _memory_sites(top: int) -> list[list[Any]]:
    """The largest live allocation sites (`PYTHONTRACEMALLOC=1` in the worker's environment): [site, MB,
    blocks]; empty when tracemalloc is not tracing."""
    import gc
    import tracemalloc

    if not tracemalloc.is_tracing():
        return _type_census(top)
    gc.collect()
    stats = tracemalloc.take_snapshot().statistics("lineno")
    return [[f"{s.traceback[0].filename.rsplit('/', 2)[-2:][-1]}:{s.traceback[0].lineno}"
             if "site-packages" not in s.traceback[0].filename else
             "/".join(s.traceback[0].filename.split("site-packages/")[1].split("/")[:2]) + f":{s.traceback[0].lineno}",
             round(s.size / 1e6, 2), s.count] for s in stats[:top]]


def _type_census(top: int) -> list[list[Any]]:
    """Without tracemalloc (which slows the actors until their leases lapse): the live objects the collector
    tracks, by type, with their own sizes (`sys.getsizeof`, not what they refer to): [type, MB, count]."""
    import gc
    import sys as _sys
    from collections import Counter

    gc.collect()
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] += 1
        try:
            sizes[name] += _sys.getsizeof(obj)
        except TypeError:
            pass
    return [[name, round(size / 1e6, 2), counts[name]] for name, size in sizes.most_common(top)]


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the benchmark process dies, so a killed run leaves nothing behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


async def _settle(quiet_turns: int = 5, timeout: float = 5.0) -> float:
    """Until this process's event loop has been idle for a few turns in a row (a 1 ms timer firing on time):
    work a market move set off (a burst of book updates for the pricer) is done. Returns the time it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    quiet = 0
    while quiet < quiet_turns and loop.time() - start < timeout:
        before = loop.time()
        await asyncio.sleep(0.001)
        quiet = quiet + 1 if loop.time() - before < 0.0015 else 0
    return loop.time() - start


def main(argv: list[str] | None = None) -> None:
    from bus.logging import configure_logging

    _die_with_parent()
    configure_logging(json=True)
    from bus.loop import run

    run(_run(_parse(argv)))


if __name__ == "__main__":
    main()
