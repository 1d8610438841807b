"""Publishes whose acks are awaited together, and state written back once per burst of an intent's steps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import nats.js.errors
import pytest

from bus.acks import AckMux, PublishTimeout
from bus.actor import Actor, IntentContext
from bus.bus import Bus
from bus.runtime import ActorHost
from bus.server import EmbeddedNats
from bus.state import StaleState, StateStore
from messages import IntentAccepted, SubmitIntent, subjects
from messages.base import Message, routing
from tests.helpers import fast_settings, new_intent, wait_until


class Seen(msgspec.Struct):
    qtys: list[str] = msgspec.field(default_factory=list)


class Burst(Actor[Seen]):
    """Keeps every quantity it is sent. Waits at the gate on qty 1 (so the rest queue up behind it), forgets
    the intent on qty 9, fails the first time it sees qty 3 of an intent named `flaky-*`."""

    name = "burst"
    consumes = (SubmitIntent,)
    produces = (IntentAccepted,)
    State = Seen

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.failed_once: set[str] = set()
        self.handled = 0

    async def handle(self, msg: Message, ctx: IntentContext[Seen]) -> None:
        assert isinstance(msg, SubmitIntent)
        if msg.qty == 1:
            await self.gate.wait()
        if msg.qty == 3 and msg.intent_id.startswith("flaky") and msg.intent_id not in self.failed_once:
            self.failed_once.add(msg.intent_id)
            raise RuntimeError("fails once")
        self.handled += 1
        if msg.qty == 9:
            ctx.forget()
            return
        state = ctx.state or Seen()
        state.qtys.append(str(msg.qty))
        ctx.save(state)
        await ctx.publish(
            IntentAccepted(**routing(msg), side=msg.side, qty=msg.qty, strategy="market", deadline_ns=1,
                           msg_id=f"{msg.intent_id}.accepted.{msg.qty}")
        )


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, fast_settings(max_deliveries=5))
    yield b
    await b.close()


async def _writes(bus: Bus, intent_id: str) -> list[str]:
    """Every write to the intent's state key, as its KV operation."""
    ops: list[str] = []

    async def keep(msg: Any) -> None:
        ops.append((msg.headers or {}).get("KV-Operation", "PUT"))

    await bus.nc.subscribe(f"$KV.{bus.settings.state_bucket}.burst.*.{intent_id}", cb=keep)
    await bus.nc.flush()
    return ops


async def _burst(bus: Bus, intent_id: str, qtys: list[int]) -> None:
    for qty in qtys:
        await bus.publish(new_intent(intent_id=intent_id, qty=Decimal(qty), msg_id=f"{intent_id}.{qty}"))


async def _unacked(bus: Bus) -> int:
    total = 0
    for p in range(bus.settings.partitions):
        info = await bus.js.consumer_info(bus.settings.stream, f"burst-p{p}")
        total += info.num_ack_pending + info.num_pending
    return total


async def test_a_burst_of_an_intents_messages_costs_one_state_write_and_all_are_acknowledged(bus: Bus) -> None:
    actor = Burst()
    writes = await _writes(bus, "b-1")
    async with ActorHost(bus, actor) as host:
        await _burst(bus, "b-1", [1, 2, 4, 5, 6])  # 2..6 queue behind the gate
        await wait_until(lambda: host.queued("b-1") == 4)
        actor.gate.set()
        await wait_until(lambda: actor.handled == 5)
        await wait_until(lambda: _zero(bus), timeout=5)  # acknowledged only after the write
        stored = await host._store.find("b-1")

    assert writes == ["PUT"]
    assert stored == Seen(qtys=["1", "2", "4", "5", "6"])


async def _zero(bus: Bus) -> bool:
    return await _unacked(bus) == 0


async def test_an_intent_that_starts_and_ends_within_one_burst_writes_no_state(bus: Bus) -> None:
    actor = Burst()
    writes = await _writes(bus, "b-2")
    async with ActorHost(bus, actor) as host:
        await _burst(bus, "b-2", [1, 2, 9])
        await wait_until(lambda: host.queued("b-2") == 2)
        actor.gate.set()
        await wait_until(lambda: _zero(bus), timeout=5)  # all three acknowledged, so the batch committed

    assert actor.handled == 3
    assert writes == []


async def test_a_step_failing_in_a_burst_redelivers_the_whole_burst_and_keeps_none_of_it(bus: Bus) -> None:
    actor = Burst()
    writes = await _writes(bus, "flaky-1")
    async with ActorHost(bus, actor) as host:
        await _burst(bus, "flaky-1", [1, 2, 3, 4])
        await wait_until(lambda: host.queued("flaky-1") == 3)
        actor.gate.set()
        await wait_until(lambda: host.stats["failed"] == 1)
        await _burst(bus, "flaky-1", [5])  # newer than the burst on its way back: must wait for it
        await wait_until(lambda: actor.handled == 7, timeout=10)  # 1, 2, then 1 to 5 again
        await wait_until(lambda: _zero(bus), timeout=10)
        stored = await host._store.find("flaky-1")

    # 1 and 2 were handled, then 3 failed: their state was dropped and they came again, so each quantity is
    # in the state exactly once, in log order, and what they published was stored once (same msg ids).
    assert stored == Seen(qtys=["1", "2", "3", "4", "5"])
    assert host.stats["failed"] == 1
    assert writes and set(writes) == {"PUT"}
    info = await bus.js.stream_info(bus.settings.stream, subjects_filter=subjects.stored_filter("exec.intent_accepted.*.*.flaky-1"))
    assert sum((info.state.subjects or {}).values()) == 5


async def test_a_commit_the_log_refuses_backs_off_and_succeeds_once_writes_come_back(bus: Bus) -> None:
    import dataclasses

    from nats.js.api import DiscardPolicy

    actor = Burst()
    stream = bus.settings.stream
    async with ActorHost(bus, actor) as host:
        await _burst(bus, "refused-1", [1])  # held at the gate
        await wait_until(lambda: host.queued("refused-1") == 0 and host.working("refused-1"))
        original = (await bus.js.stream_info(stream)).config
        info = await bus.js.stream_info(stream)
        # The log takes no new message (what a full store does): the handler's IntentAccepted is refused.
        await bus.js.update_stream(
            dataclasses.replace(original, max_msgs=info.state.messages, discard=DiscardPolicy.NEW)
        )
        started = asyncio.get_running_loop().time()
        actor.gate.set()
        await wait_until(lambda: host.stats["failed"] >= 3, timeout=10)
        # Handed back with 0.1 s, then 0.2 s between tries (the server enforces a nak's delay), not at once.
        assert asyncio.get_running_loop().time() - started >= 0.3
        await bus.js.update_stream(original)
        await wait_until(lambda: _zero(bus), timeout=10)
        stored = await host._store.find("refused-1")

    assert stored == Seen(qtys=["1"]) and host.stats["dead_lettered"] == 0


async def test_stopping_commits_what_waits_for_the_flush_delay(nats_server: EmbeddedNats) -> None:
    slow = await Bus.connect(nats_server.url, fast_settings(flush_delay_s=60.0))
    try:
        actor = Burst()
        writes = await _writes(slow, "held-1")
        host = await ActorHost(slow, actor).start()
        await _burst(slow, "held-1", [2])
        await wait_until(lambda: actor.handled == 1)
        assert writes == [] and await _unacked(slow) == 1  # held back for a minute
        await host.stop()
        await slow.nc.flush()

        assert writes == ["PUT"] and await _unacked(slow) == 0
    finally:
        await slow.close()


async def test_a_bucket_made_without_message_ttl_gets_it(bus: Bus) -> None:
    from nats.js.api import StreamConfig

    from bus.streams import _allow_message_ttl

    await bus.js.add_stream(StreamConfig(name="KV_old_bucket", subjects=["$KV.old_bucket.>"], allow_msg_ttl=False,
                                         allow_rollup_hdrs=True, max_msgs_per_subject=1))
    await _allow_message_ttl(bus.js, "old_bucket")

    assert (await bus.js.stream_info("KV_old_bucket")).config.allow_msg_ttl


async def test_acks_come_back_in_send_order_with_increasing_sequences(bus: Bus) -> None:
    intents = [new_intent() for _ in range(200)]
    futures = [await bus.send(i) for i in intents]
    acks = await asyncio.gather(*futures)

    seqs = [a.seq for a in acks]
    assert seqs == sorted(seqs) and len(set(seqs)) == 200
    again = await bus.publish(intents[0])
    assert again.duplicate and again.seq == seqs[0]


async def test_jetstream_errors_surface_as_nats_own_exceptions(bus: Bus) -> None:
    kv_subject = f"$KV.{bus.settings.state_bucket}.burst.0.x"
    await bus.acks.publish(kv_subject, b"1", {"Nats-Expected-Last-Subject-Sequence": "0"})
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await bus.acks.publish(kv_subject, b"2", {"Nats-Expected-Last-Subject-Sequence": "0"})
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await bus.acks.publish("not.a.stream.subject", b"x")


async def test_a_publish_nobody_acknowledges_times_out(bus: Bus) -> None:
    mux = AckMux(bus.nc, timeout_s=0.2)
    await mux.start()
    await bus.nc.subscribe("silent.listener", cb=_ignore)  # someone receives it, nobody answers
    await bus.nc.flush()
    try:
        with pytest.raises(PublishTimeout):
            await mux.publish("silent.listener", b"x")
    finally:
        await mux.stop()


async def _ignore(msg: Any) -> None:
    return None


async def test_a_new_intent_costs_no_kv_read_and_a_concurrent_writer_makes_the_state_stale(bus: Bus) -> None:
    kv = bus.buckets.state
    reads: list[str] = []

    async def count(msg: Any) -> None:
        reads.append(msg.subject)

    await bus.nc.subscribe("$JS.API.DIRECT.GET.>", cb=count)
    await bus.nc.subscribe("$JS.API.STREAM.MSG.GET.>", cb=count)
    await bus.nc.flush()
    mine = StateStore(bus.js, kv, "burst", Seen, bus.acks)
    other = StateStore(bus.js, kv, "burst", Seen, bus.acks)
    assert await mine.intents_in(3) == [] and await other.intents_in(3) == []

    assert await mine.load(3, "new-1") is None
    await bus.nc.flush()
    assert reads == []  # nothing was stored in partition 3 when we took it, so nothing to read

    other.stage(3, "new-1", Seen(qtys=["theirs"]))
    await other.flush(3, "new-1")
    mine.stage(3, "new-1", Seen(qtys=["mine"]))
    with pytest.raises(StaleState):
        await mine.flush(3, "new-1")
    assert await mine.load(3, "new-1") == Seen(qtys=["theirs"])  # read now, never assumed again

    writes = await _writes_of(bus, "burst.3.new-1")
    other.stage(3, "new-1", Seen(qtys=["theirs"]))  # the same bytes again
    await other.flush(3, "new-1")
    mine.stage(3, "new-1", Seen(qtys=["theirs"]))  # (what it read back: the same too)
    await mine.flush(3, "new-1")
    await bus.nc.flush()
    assert writes == []
    # What each keeps to tell is a digest, not a copy of the encoded state (ten thousand open intents).
    assert all(len(e.written or b"") == 16 for store in (mine, other) for e in store._cache.values())


async def _writes_of(bus: Bus, key: str) -> list[str]:
    ops: list[str] = []

    async def keep(msg: Any) -> None:
        ops.append("PUT")

    await bus.nc.subscribe(f"$KV.{bus.settings.state_bucket}.{key}", cb=keep)
    await bus.nc.flush()
    return ops


async def test_the_stream_sequence_read_off_the_ack_subject_matches_nats_metadata(bus: Bus) -> None:
    from bus.consumer import ack_info

    await bus.publish(new_intent())
    await bus.publish(new_intent())
    sub = await bus.js.pull_subscribe("exec.submit_intent.>", durable="seq-check", stream=bus.settings.stream)
    messages = await sub.fetch(2, timeout=5)

    assert [ack_info(m.reply).stream_seq for m in messages] == [m.metadata.sequence.stream for m in messages]
    assert ack_info(messages[1].reply).stream_seq == ack_info(messages[0].reply).stream_seq + 1
    assert [ack_info(m.reply).delivered for m in messages] == [1, 1]
    await messages[0].nak()
    (again,) = await sub.fetch(1, timeout=5)
    assert ack_info(again.reply).delivered == again.metadata.num_delivered == 2


async def test_retired_state_and_deletion_markers_expire_and_retired_state_is_read_back(bus: Bus) -> None:
    kv = bus.buckets.state
    store = StateStore(bus.js, kv, "burst", Seen, bus.acks, retired_ttl_s=3600)
    await store.intents_in(5)
    headers: dict[str, dict[str, str]] = {}

    async def keep(msg: Any) -> None:
        headers[msg.subject.rsplit(".", 1)[1]] = dict(msg.headers or {})

    await bus.nc.subscribe(f"$KV.{bus.settings.state_bucket}.burst.5.*", cb=keep)
    await bus.nc.flush()

    store.stage(5, "done-1", Seen(qtys=["1"]), retire=True)
    await store.flush(5, "done-1")
    store.stage(5, "gone-1", Seen(qtys=["1"]))
    await store.flush(5, "gone-1")
    store.stage(5, "gone-1", None)
    await store.flush(5, "gone-1")
    await bus.nc.flush()

    assert headers["done-1"]["Nats-TTL"] == "3600" and store.cached == 0  # written, then out of memory
    assert headers["gone-1"]["KV-Operation"] == "PURGE" and headers["gone-1"]["Nats-TTL"] == "3600"
    assert await store.load(5, "done-1") == Seen(qtys=["1"])  # a late message still finds it
    assert await store.load(5, "gone-1") is None
