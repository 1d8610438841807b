"""The `EXEC` stream's shape (messages/subjects.py): a new stream stores the partition before the intent; a
stream made before that keeps its own shape and everything works on it as before — consumers, rebuilding an
intent from its log after a takeover, reading the log back by intent — and the operator is told why to move."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.actor import Actor, IntentContext
from bus.bus import Bus
from bus.msglog import read_stream
from bus.ops.system import build_actor
from bus.runtime import ActorHost
from bus.server import EmbeddedNats
from bus.streams import stream_config
from messages import (
    Message,
    AggressiveLimitParams,
    CancelIntent,
    CancelIntentAccepted,
    ExecutionCompleted,
    OrderPlaced,
    SubmitIntent,
    subjects,
)
from messages.base import routing
from tests.e2e.conftest import Running, start_running, stepped_config, stop_running
from tests.helpers import assert_invariants, fast_settings, new_intent, wait_until


@pytest.fixture(params=subjects.SHAPES)
async def shaped(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Running, subjects.Shape]]:
    """A system on a server whose `EXEC` stream was made in the given shape before the system started."""
    shape: subjects.Shape = request.param
    with tempfile.TemporaryDirectory(prefix="execbus-shape-") as store:
        async with EmbeddedNats(store_dir=store) as server:
            settings = fast_settings()
            maker = await nats.connect(server.url)  # (a bare client: a Bus would make the stream in today's shape)
            try:
                await maker.jetstream().add_stream(stream_config(settings, shape))
            finally:
                await maker.close()
            config = dataclasses.replace(stepped_config(), nats_url=server.url, settings=settings)
            running = await start_running(config)
            try:
                yield running, shape
            finally:
                await stop_running(running)


def resting() -> SubmitIntent:
    """An aggressive-limit buy whose first attempt rests at the touch of the frozen market."""
    return new_intent(strategy="aggressive_limit", qty=Decimal("0.01"), params=AggressiveLimitParams(
        attempt_timeout_seconds=Decimal("60"), total_timeout_seconds=Decimal("120"), max_retries=2))


async def restart(running: Running, name: str) -> None:
    """A new instance of the actor: it holds nothing in memory, so it rebuilds its intents from the log."""
    system = running.system
    await system.hosts[name].stop()
    actor = build_actor(name, system.venue_pool, system.config.actor_options.get(name))
    system.hosts[name] = await ActorHost(system.bus, actor, clock=system.clock).start()


async def test_a_stream_keeps_its_shape_and_an_intent_rebuilt_from_its_log_finishes_right(
    shaped: tuple[Running, subjects.Shape],
) -> None:
    running, shape = shaped
    assert running.bus.shape == shape
    intent = resting()
    await running.bus.publish(intent)
    (placed,) = await running.recorder.wait_for(OrderPlaced, intent.intent_id, timeout=10)

    for name in ("supervisor", "tracker"):
        await restart(running, name)
    await running.bus.publish(CancelIntent(**routing(intent), request="r1", reason="shape test", requested_by="test"))
    (report,) = await running.recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=20)

    # The new supervisor knew the resting order from the log alone: it canceled that one and placed nothing else.
    (answer,) = running.recorder.of(CancelIntentAccepted, intent.intent_id)
    assert answer.phase == "working"
    assert report.status == "canceled" and report.orders == (placed.client_order_id,)
    await assert_invariants(report, running.recorder, running.exchange)

    stored = await running.bus.js.stream_info(running.bus.settings.stream, subjects_filter=subjects.intent_filter(intent.intent_id, shape))
    names = list(stored.state.subjects or {})
    assert names and all(subjects.parse(n, shape) is not None for n in names)
    assert {subjects.parse(n, shape).intent_id for n in names} == {intent.intent_id}  # type: ignore[union-attr]
    records = [r async for r in read_stream(running.bus, f"exec.*.*.*.{intent.intent_id}")]
    assert records[0].message().kind == "submit_intent" and records[-1].message().kind == "execution_completed"
    assert len(records) == sum(stored.state.subjects.values())  # type: ignore[union-attr]
    assert {subjects.parse(r.subject) for r in records} == {  # live subjects again: the partition taken out
        subjects.parse(subjects.subject(r.message().kind, "paper", "BTC/USDT", intent.intent_id)) for r in records}


async def test_a_new_stream_takes_the_partition_first_shape(running: Running) -> None:
    info = await running.bus.js.stream_info(running.bus.settings.stream)
    assert running.bus.shape == "partition_first" == subjects.CURRENT_SHAPE
    assert subjects.shape_of(info.config.subject_transform.dest) == "partition_first"  # type: ignore[union-attr]
    consumer = await running.bus.js.consumer_info(running.bus.settings.stream, "pricer-p0")
    assert consumer.config.filter_subjects == ["exec.price_requested.*.*.0.*"]


async def test_a_stream_with_another_partition_count_is_refused_with_what_to_do() -> None:
    with tempfile.TemporaryDirectory(prefix="execbus-shape-") as store:
        async with EmbeddedNats(store_dir=store) as server:
            maker = await Bus.connect(server.url, fast_settings(partitions=4))
            await maker.close()
            with pytest.raises(RuntimeError, match="EXECBUS_PARTITIONS"):
                await Bus.connect(server.url, fast_settings(partitions=8))


async def test_an_older_stream_is_used_as_it_is_and_the_operator_told_why_to_move(
    shaped: tuple[Running, subjects.Shape],
) -> None:
    running, shape = shaped
    # An operator's command on that bus, as its own process: what it prints is what the operator reads.
    env = {**os.environ, "EXECBUS_LOG_LEVEL": "warning", "EXECBUS_LOG_JSON": "1"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bus.ops.cli", "state", "--nats", running.system.url, "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    said = [e for e in _json_lines(done.stderr) if e.get("event") == "stream_shape_old"]
    assert bool(said) == (shape != subjects.CURRENT_SHAPE)
    if said:
        assert said[0]["shape"] == "partition_last" and "new store" in said[0]["why"]
    info = await running.bus.js.stream_info(running.bus.settings.stream)
    assert subjects.shape_of(info.config.subject_transform.dest) == shape  # type: ignore[union-attr]


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class Counting(Actor[None]):
    """Counts the `SubmitIntent`s it is delivered, per intent."""

    name = "counting"
    consumes = (SubmitIntent,)
    produces = ()

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    async def handle(self, msg: Message, ctx: IntentContext[None]) -> None:
        self.seen[msg.intent_id] = self.seen.get(msg.intent_id, 0) + 1


async def test_a_consumer_an_earlier_version_made_takes_this_versions_kinds_and_keeps_its_place(
    nats_server: EmbeddedNats,
) -> None:
    bus = await Bus.connect(nats_server.url, fast_settings())
    try:
        stream = bus.settings.stream
        # An earlier version of the actor consumed another kind; its durables are positioned after `before`.
        before = new_intent()
        await bus.publish(before)
        for p in range(bus.settings.partitions):
            await bus.js.add_consumer(stream, ConsumerConfig(
                durable_name=f"counting-p{p}", filter_subjects=[subjects.partition_filter("intent_accepted", p)],
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW))
        after = new_intent()
        await bus.publish(after)  # logged while no version runs

        actor = Counting()
        async with ActorHost(bus, actor) as host:
            await wait_until(lambda: len(host.partitions) == bus.settings.partitions)
            await wait_until(lambda: actor.seen.get(after.intent_id) == 1, timeout=10)
            for p in range(bus.settings.partitions):
                info = await bus.js.consumer_info(stream, f"counting-p{p}")
                assert info.config.filter_subjects == [subjects.partition_filter("submit_intent", p)]
                assert info.name == f"counting-p{p}"  # the same durable, updated: not a new one

        assert before.intent_id not in actor.seen  # behind the durable's position: not delivered again
    finally:
        await bus.close()
