"""Back-pressure between the log and an actor, on a real nats-server: an actor pulls only what it can work,
so the rest waits in the log and an overloaded replica keeps its leases instead of losing them to its own
backlog (the overload collapse of round two's throughput benchmark)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from bus.actor import Actor, IntentContext
from bus.bus import Bus
from bus.runtime import ActorHost
from bus.server import EmbeddedNats
from messages import SubmitIntent, subjects
from messages.base import Message
from tests.helpers import fast_settings, new_intent, wait_until


class Seen(msgspec.Struct):
    n: int = 0


class Busy(Actor[Seen]):
    """Works each message in `turns` slices of `cpu_s` of the event loop with a yield between them (a
    handler's synchronous work between its awaits), or waits for `gate`."""

    name = "busy"
    consumes = (SubmitIntent,)
    produces = ()
    State = Seen

    def __init__(self, cpu_s: float = 0.0, turns: int = 1, gate: asyncio.Event | None = None) -> None:
        self.cpu_s = cpu_s
        self.turns = turns
        self.gate = gate
        self.started: list[str] = []
        self.handled: list[str] = []
        self.working = 0
        self.most_working = 0

    async def handle(self, msg: Message, ctx: IntentContext[Seen]) -> None:
        if ctx.intent_id.startswith("boom"):
            raise RuntimeError("handler bug")  # retried, then dead-lettered
        self.started.append(ctx.intent_id)
        self.working += 1
        self.most_working = max(self.most_working, self.working)
        if self.gate is not None:
            await self.gate.wait()
        for _ in range(self.turns):
            until = time.perf_counter() + self.cpu_s
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)
        ctx.save(Seen(n=(ctx.state.n if ctx.state else 0) + 1))
        self.handled.append(ctx.intent_id)
        self.working -= 1


async def _publish(bus: Bus, n: int) -> list[str]:
    intents = [new_intent() for _ in range(n)]
    await asyncio.gather(*(bus.publish(i) for i in intents))
    return [i.intent_id for i in intents]


async def test_an_actor_that_cannot_keep_up_takes_only_its_batch_and_the_rest_waits_in_the_log(
    nats_server: EmbeddedNats,
) -> None:
    settings = fast_settings(partitions=1, fetch_batch=16)
    bus = await Bus.connect(nats_server.url, settings)
    gate = asyncio.Event()
    actor = Busy(gate=gate)
    try:
        async with ActorHost(bus, actor):
            ids = await _publish(bus, 200)
            await wait_until(lambda: len(actor.started) == 16)
            info = await bus.js.consumer_info(settings.stream, "busy-p0")
            # Its pull asked for no more than it holds: the server has the rest, undelivered.
            assert info.num_ack_pending == 16 and info.num_pending == 184
            assert len(actor.started) == 16

            gate.set()
            await wait_until(lambda: len(actor.handled) == 200, timeout=30)
        assert sorted(actor.handled) == sorted(ids)  # each once, none lost
    finally:
        gate.set()  # (a failed assertion must not leave the host draining a handler that never ends)
        await bus.close()


async def test_an_overloaded_replica_keeps_its_leases_and_handles_everything_once(nats_server: EmbeddedNats) -> None:
    """A backlog of 1,500 messages waits in the log when the replica starts; each is worked in 30 slices of
    0.1 ms. Pulled without bound (as before), hundreds of handlers share each turn of the event loop, the
    lease rounds come later than the 0.8 s a lease is trusted for, and the replica skips steps (58-340
    skipped in trials). Pulled 8 at a time per partition, at most 64 are worked at once and the renewals
    are in time."""
    settings = fast_settings(partitions=8, fetch_batch=8, lease_ttl_s=1.0)
    bus = await Bus.connect(nats_server.url, settings)
    actor = Busy(cpu_s=0.0001, turns=30)
    try:
        async with ActorHost(bus, actor):
            pass  # (its durables now exist: what is published next waits for it in the log)
        ids = await _publish(bus, 1500)
        async with ActorHost(bus, actor) as host:
            await wait_until(lambda: len(actor.handled) >= 1500, timeout=90)
            assert host.stats["lapsed"] == 0
            assert sorted(host.partitions) == list(range(8))
        assert sorted(actor.handled) == sorted(ids)  # each once, none lost
        assert actor.most_working <= 8 * 8
    finally:
        await bus.close()


async def test_what_fails_is_dead_lettered_or_rejected_is_counted_off_and_the_pull_goes_on(nats_server: EmbeddedNats) -> None:
    """Every way a message leaves the actor gives its credit back: handled, retried and dead-lettered after
    its handler kept failing, undecodable and rejected. With a batch of 4, a single leak per partition
    would soon stop the pull for good."""
    settings = fast_settings(partitions=2, fetch_batch=4, max_deliveries=3)
    bus = await Bus.connect(nats_server.url, settings)
    actor = Busy()
    letters: list[object] = []
    try:
        async with ActorHost(bus, actor) as host:

            async def keep(msg: object) -> None:
                letters.append(msg)

            await bus.nc.subscribe(subjects.dead_letter("busy"), cb=keep)
            await bus.nc.flush()
            for i in range(3):
                await bus.publish(new_intent(intent_id=f"boom-{i}"))
                await bus.nc.publish(subjects.subject("submit_intent", "paper", "BTC/USDT", f"junk-{i}"), b"\xff{oops")
            first = await _publish(bus, 20)
            await wait_until(lambda: len(actor.handled) == 20 and len(letters) == 6, timeout=20)
            await wait_until(lambda: not host._in_hand)  # every one of them counted off

            later = await _publish(bus, 40)  # ten batches' worth: the pull still asks for more
            await wait_until(lambda: len(actor.handled) == 60, timeout=20)
        assert sorted(actor.handled) == sorted(first + later)
    finally:
        await bus.close()


async def test_a_burst_of_venue_events_runs_a_bounded_number_of_steps_at_once(nats_server: EmbeddedNats) -> None:
    """A venue reply listing a thousand fills becomes a thousand steps outside the log (`run_for_intent`):
    they run `event_steps` at a time, every one of them, and the replica's leases hold meanwhile."""
    settings = fast_settings(partitions=1, event_steps=16, lease_ttl_s=1.0)
    bus = await Bus.connect(nats_server.url, settings)
    actor = Busy()
    running = most = 0
    done: list[str] = []

    def event(intent_id: str) -> Any:
        async def step(ctx: IntentContext[Seen]) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            for _ in range(5):  # (a fill's bookkeeping between its awaits)
                until = time.perf_counter() + 0.0001
                while time.perf_counter() < until:
                    pass
                await asyncio.sleep(0)
            ctx.save(Seen(n=(ctx.state.n if ctx.state else 0) + 1))
            done.append(intent_id)
            running -= 1

        return step

    try:
        async with ActorHost(bus, actor) as host:
            await wait_until(lambda: list(host.partitions) == [0])
            ids = [f"fill-{i}" for i in range(1000)]
            for intent_id in ids:
                host.run_for_intent(intent_id, 0, event(intent_id))
            await wait_until(lambda: len(done) == 1000, timeout=60)
            assert host.stats["lapsed"] == 0
        assert sorted(done) == sorted(ids) and 1 < most <= 16
    finally:
        await bus.close()


async def test_a_partition_let_go_does_not_wait_behind_other_partitions_steps(nats_server: EmbeddedNats) -> None:
    """Its steps waiting for one of the `event_steps` slots go at once when the partition is released: the
    release (and with it the lease round) must not wait for the other partitions' queue to drain."""
    settings = fast_settings(partitions=2, event_steps=1)
    bus = await Bus.connect(nats_server.url, settings)
    actor = Busy()
    gate = asyncio.Event()
    ran: list[str] = []

    def step(name: str, wait: bool) -> Any:
        async def run(ctx: IntentContext[Seen]) -> None:
            if wait:
                await gate.wait()
            ran.append(name)

        return run

    try:
        async with ActorHost(bus, actor) as host:
            await wait_until(lambda: sorted(host.partitions) == [0, 1])
            host.run_for_intent("holds-the-slot", 0, step("holds-the-slot", True))
            host.run_for_intent("queued", 1, step("queued", False))
            await wait_until(lambda: "queued" in host._workers and "holds-the-slot" in host._workers)
            await asyncio.wait_for(host._release(1), 10)  # the one slot is still taken
            assert ran == ["queued"]
            gate.set()
            await wait_until(lambda: ran == ["queued", "holds-the-slot"])
    finally:
        gate.set()
        await bus.close()
