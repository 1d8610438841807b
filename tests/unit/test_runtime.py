"""The actor runtime on a real nats-server: isolation of bad input, retries, ordering, timers, state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import nats.errors
import pytest

from bus.actor import Actor, IntentContext
from bus.bus import Bus
from bus.runtime import ActorHost
from bus.server import EmbeddedNats
from messages import DeadLetter, IntentAccepted, IntentRejected, SubmitIntent, subjects
from messages.base import Message, routing
from tests.helpers import fast_settings, new_intent, wait_until


class Count(msgspec.Struct):
    seen: list[str] = msgspec.field(default_factory=list)
    timer_fired: bool = False


class Recording(Actor[Count]):
    """Records what it handles; fails on intents whose id starts with 'boom'; holds 'slow' ones."""

    name = "recording"
    consumes = (SubmitIntent,)
    produces = (IntentRejected,)
    State = Count

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []
        self.invalid: list[str] = []
        self.gate = asyncio.Event()
        self.resumed: list[str] = []
        self.timers: list[str] = []
        self.bus_down = 0
        self.outlived_lease: list[str] = []

    async def handle(self, msg: Message, ctx: IntentContext[Count]) -> None:
        assert isinstance(msg, SubmitIntent)
        if msg.intent_id.startswith("boom"):
            raise RuntimeError("handler bug")
        if msg.intent_id.startswith("busdown") and self.bus_down > 0:
            self.bus_down -= 1
            raise nats.errors.TimeoutError  # (what a JetStream request does while nats-server restarts)
        if msg.intent_id.startswith("outlived"):
            self.outlived_lease.append(ctx.intent_id)
            ctx.owner_unexpired = lambda: len(self.outlived_lease) > 1  # the lease expired while it waited, once
            await ctx.publish(IntentRejected(**routing(msg), field="", reason="spoken by a step that outlived its lease"))
        if msg.intent_id.startswith("slow"):
            await self.gate.wait()
        state = ctx.state or Count()
        state.seen.append(str(msg.qty))
        ctx.save(state)
        self.handled.append((msg.intent_id, str(msg.qty)))
        if msg.intent_id.startswith("timer"):
            ctx.wake_at(ctx.clock.now_ns() + 50_000_000)

    async def on_timer(self, ctx: IntentContext[Count]) -> None:
        self.timers.append(ctx.intent_id)
        assert ctx.state is not None
        ctx.state.timer_fired = True
        ctx.save(ctx.state)

    async def on_resume(self, ctx: IntentContext[Count]) -> None:
        self.resumed.append(ctx.intent_id)

    async def on_invalid(self, subject: str, raw: bytes, error: Any, publish: Any) -> None:
        self.invalid.append(subject)


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, fast_settings(max_deliveries=3))
    yield b
    await b.close()


async def _dead_letters(bus: Bus) -> list[DeadLetter]:
    letters: list[DeadLetter] = []

    async def keep(msg: Any) -> None:
        letters.append(msgspec.json.decode(msg.data, type=DeadLetter))

    await bus.nc.subscribe(subjects.dead_letter("recording"), cb=keep)
    await bus.nc.flush()
    return letters


async def test_an_undecodable_message_is_dead_lettered_with_its_bytes_and_the_actor_goes_on(bus: Bus) -> None:
    actor = Recording()
    letters = await _dead_letters(bus)
    async with ActorHost(bus, actor):
        await bus.nc.publish(subjects.subject("submit_intent", "paper", "BTC/USDT", "junk-1"), b"\xff{oops")
        good = new_intent()
        await bus.publish(good)
        await wait_until(lambda: actor.handled and letters)

    assert letters[0].subject == "exec.submit_intent.paper.BTC-USDT.junk-1"
    assert "malformed JSON" in letters[0].reason
    assert letters[0].raw.endswith("{oops")
    assert actor.invalid == ["exec.submit_intent.paper.BTC-USDT.junk-1"]
    assert actor.handled == [(good.intent_id, "0.01")]


async def test_a_failing_handler_is_retried_then_dead_lettered_without_blocking_other_intents(bus: Bus) -> None:
    actor = Recording()
    letters = await _dead_letters(bus)
    async with ActorHost(bus, actor) as host:
        await bus.publish(new_intent(intent_id="boom-1"))
        other = new_intent()
        await bus.publish(other)
        await wait_until(lambda: letters, timeout=10)

    assert "handler failed 3 times" in letters[0].reason and "handler bug" in letters[0].reason
    assert (other.intent_id, "0.01") in actor.handled
    assert host.stats["failed"] == 3 and host.stats["dead_lettered"] == 1


async def test_a_handler_failing_on_the_bus_is_never_dead_lettered_and_runs_once_the_bus_is_back(bus: Bus) -> None:
    """A nats-server restarting times out JetStream requests (a rebuild from the log, a KV read): that says
    nothing about the message, which must not be dead-lettered however often it is redelivered meanwhile."""
    actor = Recording()
    actor.bus_down = 5  # more than max_deliveries (3)
    letters = await _dead_letters(bus)
    async with ActorHost(bus, actor) as host:
        intent = new_intent(intent_id="busdown-1")
        await bus.publish(intent)
        await wait_until(lambda: actor.handled, timeout=20)

    assert actor.handled == [(intent.intent_id, "0.01")]
    assert letters == [] and host.stats["dead_lettered"] == 0 and host.stats["failed"] == 5


async def test_a_step_that_outlived_its_lease_publishes_nothing_and_its_message_is_handled_again(bus: Bus) -> None:
    """Its messages' ids are deterministic: had it spoken after the next owner, its copy would be the one the
    log keeps. The runtime hands the message back; the next delivery (lease certain again) publishes."""
    actor = Recording()
    published: list[Any] = []

    async def keep(msg: Any) -> None:
        published.append(msg.data)

    await bus.nc.subscribe("exec.intent_rejected.>", cb=keep)
    async with ActorHost(bus, actor) as host:
        await bus.publish(new_intent(intent_id="outlived-1"))
        await wait_until(lambda: published, timeout=20)

    assert len(actor.outlived_lease) == 2 and host.stats["lapsed"] == 1
    assert len(published) == 1


async def test_messages_of_one_intent_are_handled_in_order_while_other_intents_proceed(bus: Bus) -> None:
    actor = Recording()
    async with ActorHost(bus, actor):
        for qty in ("1", "2", "3"):
            # distinct msg ids: the same intent id would otherwise be one message to JetStream
            await bus.publish(new_intent(intent_id="slow-1", qty=Decimal(qty), msg_id=f"slow-1.{qty}"))
        fast = new_intent()
        await bus.publish(fast)
        await wait_until(lambda: any(i == fast.intent_id for i, _ in actor.handled))
        assert all(i != "slow-1" for i, _ in actor.handled)  # still held at the gate
        actor.gate.set()
        await wait_until(lambda: len([1 for i, _ in actor.handled if i == "slow-1"]) == 3)

    assert [q for i, q in actor.handled if i == "slow-1"] == ["1", "2", "3"]


async def test_an_intent_whose_work_is_done_leaves_no_bookkeeping_in_the_runtime(bus: Bus) -> None:
    """A replica runs for days: what it keeps per intent to find that intent's work on a release (its
    partition) must go when there is none left, or it grows by one entry per intent ever handled."""
    actor = Recording()
    async with ActorHost(bus, actor) as host:
        intents = [new_intent() for _ in range(50)]
        for intent in intents:
            await bus.publish(intent)
        await bus.publish(new_intent(intent_id="timer-kept"))
        await wait_until(lambda: len(actor.handled) == 51)
        # Committed (the flush delay), nothing queued: only the intent with a timer armed is still known.
        await wait_until(lambda: not host._batches and not host._workers)
        assert set(host._intent_partition) <= {"timer-kept"}
        await wait_until(lambda: actor.timers == ["timer-kept"])
        await wait_until(lambda: not host._intent_partition)


async def test_a_timer_fires_at_its_absolute_deadline_and_state_survives_a_restart(bus: Bus) -> None:
    first = Recording()
    async with ActorHost(bus, first):
        await bus.publish(new_intent(intent_id="timer-1"))
        await wait_until(lambda: first.timers == ["timer-1"])

    second = Recording()
    async with ActorHost(bus, second) as host:
        await wait_until(lambda: "timer-1" in second.resumed)
        found = await host._store.find("timer-1")

    assert found == Count(seen=["0.01"], timer_fired=True)


async def test_the_actor_publishes_with_deterministic_ids_so_a_replayed_handler_is_stored_once(bus: Bus) -> None:
    intent = new_intent()
    accepted = IntentAccepted(
        intent_id=intent.intent_id, venue="paper", symbol="BTC/USDT", side="buy", qty=intent.qty,
        strategy="market", deadline_ns=1,
    )

    first = await bus.publish(accepted)
    again = await bus.publish(accepted)

    assert not first.duplicate and again.duplicate and again.seq == first.seq


async def test_a_replica_whose_lease_renewals_stall_hands_messages_back_instead_of_acting(nats_server: EmbeddedNats) -> None:
    """The failover that bought twice: an owner too busy to renew its lease still pulls from its partition
    while the next owner takes it over. Once it can no longer be sure of its lease it must not act."""
    settings = fast_settings(partitions=1, lease_ttl_s=1.0)
    first_bus = await Bus.connect(nats_server.url, settings)
    second_bus = await Bus.connect(nats_server.url, settings)
    first, second = Recording(), Recording()
    stalled = ActorHost(first_bus, first, replica="stalled")
    try:
        await stalled.start()
        before = new_intent()
        await first_bus.publish(before)
        await wait_until(lambda: first.handled)  # while its lease is renewed it works as usual

        leases = stalled._leases
        assert leases is not None and leases._task is not None
        leases._task.cancel()  # its renewals stop; its pull subscription goes on
        await wait_until(lambda: not leases.valid(0), timeout=3.0)
        assert leases.held == [0]  # it has not noticed anything yet

        during = new_intent()
        await first_bus.publish(during)
        await wait_until(lambda: stalled.stats["lapsed"] >= 1, timeout=3.0)
        async with ActorHost(second_bus, second, replica="next"):
            await wait_until(lambda: any(i == during.intent_id for i, _ in second.handled), timeout=10.0)
        assert [i for i, _ in first.handled] == [before.intent_id]
    finally:
        await stalled.stop()
        await first_bus.close()
        await second_bus.close()
