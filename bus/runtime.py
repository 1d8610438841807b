"""The actor runtime: feeds an actor its messages from the log, one intent at a time, and keeps its state.

    log (EXEC stream, partition p) --pull--> per-intent queue --> actor.handle --> publish, save state, ack

- Each partition has a durable consumer per actor (`<actor>-p<k>`); the replica holding the partition's
  lease pulls from it. Messages of one intent are handled strictly one after another; different intents
  run concurrently.
- A message that does not decode goes to the dead-letter subject with the reason and its bytes, and the
  actor is told (`on_invalid`); a handler that raises is retried with backoff and dead-lettered after
  `max_deliveries`. Nothing kills the actor.
- Timers are absolute deadlines: `ctx.wake_at(ns)` arms one; after a restart `on_resume` re-arms them from
  the stored state.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.actor import Actor, IntentContext, Services
from bus.bus import Bus
from bus.clock import Clock, WallClock
from bus.consumer import PullStream
from bus.control import ControlService
from bus.partitions import PartitionLeases
from bus.state import StaleState, StateStore
from messages import BY_KIND, InvalidMessage, Message, decode_as, subjects

__all__ = ["ActorHost"]

STEP_RETRY_NS = 500_000_000
_Work = tuple[str, Any]  # ("msg", Msg) | ("timer", None) | ("resume", None) | ("call", fn)


class ActorHost:
    """Runs one actor replica on the bus."""

    def __init__(self, bus: Bus, actor: Actor[Any], *, clock: Clock | None = None, replica: str | None = None) -> None:
        self.bus = bus
        self.actor = actor
        self.clock = clock or WallClock()
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = structlog.get_logger("execbus.actor").bind(actor=actor.name, replica=self.replica)
        settings = bus.settings
        self._settings = settings
        self._store = StateStore(bus.js, bus.buckets.state, actor.name, actor.State)
        self._streams: dict[int, PullStream] = {}
        self._queues: dict[str, asyncio.Queue[_Work]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._intent_partition: dict[str, int] = {}
        self._timers: list[tuple[int, str, int]] = []
        self._timer_at: dict[str, int] = {}
        self._timer_wakeup = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._leases: PartitionLeases | None = None
        self._control: ControlService | None = None
        self.stats = {"handled": 0, "dead_lettered": 0, "failed": 0, "timers": 0}
        self._started = False
        self._activity = bus.activity
        if self._activity is not None:
            self._activity.add_consumer(self)

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> ActorHost:
        services = Services(
            self.clock, self.run_for_intent, self._publish, self.replica, self._claim_once, self._store.find
        )
        await self.actor.start(services)
        self._timer_task = asyncio.create_task(self._run_timers(), name=f"timers-{self.actor.name}")
        self._leases = PartitionLeases(
            self.bus.js,
            self.bus.buckets.leases,
            self.actor.name,
            self.replica,
            self._settings.partitions,
            self._settings.lease_ttl_s,
            self._acquire,
            self._release,
        )
        await self._leases.start()
        self._control = ControlService(self.bus, self.actor.name, self._status, self.actor.endpoints())
        await self._control.start()
        self._started = True
        self.log.info("actor_started", partitions=self._leases.held)
        return self

    async def stop(self) -> None:
        """Graceful: stop taking messages, finish the ones taken, hand partitions back, then stop."""
        if not self._started:
            return
        self._started = False
        if self._control is not None:
            await self._control.stop()
        if self._leases is not None:
            await self._leases.stop()
        if self._timer_task is not None:
            self._timer_task.cancel()
        await self.actor.stop()
        self.log.info("actor_stopped", **self.stats)

    async def __aenter__(self) -> ActorHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def partitions(self) -> list[int]:
        return self._leases.held if self._leases else []

    # -- partitions -------------------------------------------------------------------------------------

    async def _acquire(self, partition: int) -> None:
        durable = f"{self.actor.name}-p{partition}"
        config = ConsumerConfig(
            durable_name=durable,
            filter_subjects=[subjects.partition_filter(t.kind, partition) for t in self.actor.consumes],
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            ack_wait=self._settings.ack_wait_s,
            max_ack_pending=10_000,
            max_deliver=-1,
        )
        try:
            await self.bus.js.consumer_info(self._settings.stream, durable)
        except nats.js.errors.NotFoundError:
            await self.bus.js.add_consumer(self._settings.stream, config)
        for intent_id in await self._store.intents_in(partition):
            self._enqueue(intent_id, partition, ("resume", None))
        stream = PullStream(
            self.bus.nc,
            self._settings.stream,
            durable,
            lambda msg, p=partition: self._on_message(p, msg),
            batch=self._settings.fetch_batch,
        )
        await stream.start()
        self._streams[partition] = stream

    async def _release(self, partition: int) -> None:
        stream = self._streams.pop(partition, None)
        if stream is not None:
            await stream.stop()
        draining = [
            self._workers[i] for i, p in self._intent_partition.items() if p == partition and i in self._workers
        ]
        if draining:
            await asyncio.gather(*draining, return_exceptions=True)
        for intent_id in [i for i, p in self._intent_partition.items() if p == partition]:
            self._intent_partition.pop(intent_id, None)
            self._timer_at.pop(intent_id, None)
        self._store.drop_partition(partition)

    # -- dispatch ---------------------------------------------------------------------------------------

    def _on_message(self, partition: int, msg: Msg) -> None:
        parts = subjects.parse(msg.subject)
        intent_id = parts.intent_id if parts else f"_unrouted.{msg.subject}"
        self._enqueue(intent_id, partition, ("msg", msg))

    def run_for_intent(
        self, intent_id: str, partition: int, fn: Callable[[IntentContext[Any]], Awaitable[None]]
    ) -> None:
        """Run `fn` in the intent's context, after the messages already queued for it."""
        self._enqueue(intent_id, partition, ("call", fn))

    def _enqueue(self, intent_id: str, partition: int, work: _Work) -> None:
        if self._activity is not None:
            self._activity.begin(delivered=work[0] == "msg")
        queue = self._queues.get(intent_id)
        if queue is None:
            queue = self._queues[intent_id] = asyncio.Queue()
            self._intent_partition[intent_id] = partition
            self._workers[intent_id] = asyncio.create_task(self._work(intent_id, partition, queue))
        queue.put_nowait(work)

    async def _work(self, intent_id: str, partition: int, queue: asyncio.Queue[_Work]) -> None:
        """One task per intent with queued work; it ends when the queue is empty."""
        try:
            while not queue.empty():
                kind, payload = queue.get_nowait()
                try:
                    with structlog.contextvars.bound_contextvars(intent_id=intent_id):
                        if kind == "msg":
                            await self._handle_message(intent_id, partition, payload)
                        else:
                            await self._run_step(intent_id, partition, kind, payload)
                finally:
                    if self._activity is not None:
                        self._activity.end()
        finally:
            self._queues.pop(intent_id, None)
            self._workers.pop(intent_id, None)

    async def _handle_message(self, intent_id: str, partition: int, raw: Msg) -> None:
        parts = subjects.parse(raw.subject)
        expected = BY_KIND.get(parts.kind) if parts else None
        if expected is None:
            await self._reject(raw, InvalidMessage("", f"no message kind for subject {raw.subject}"))
            return
        try:
            msg = decode_as(raw.data, expected)
            _check_routing(msg, parts)  # type: ignore[arg-type]
        except InvalidMessage as exc:
            await self._reject(raw, exc)
            return
        try:
            seq = raw.metadata.sequence.stream if raw.metadata else 0
            await self._run_step(intent_id, partition, "msg", msg, raise_errors=True, seq=seq)
        except StaleState:
            await raw.nak(delay=0.1)  # someone else owns this intent now; let them have it
        except Exception as exc:
            await self._failed(raw, exc)
        else:
            await raw.ack()

    async def _run_step(
        self, intent_id: str, partition: int, kind: str, payload: Any, *, raise_errors: bool = False, seq: int = 0
    ) -> None:
        state = await self._store.load(partition, intent_id)
        ctx: IntentContext[Any] = IntentContext(
            intent_id, partition, state, self._publish, self.clock, self.log.bind(intent_id=intent_id)
        )
        ctx.message_seq = seq
        try:
            if kind == "msg":
                await self.actor.handle(payload, ctx)
                self.stats["handled"] += 1
            elif kind == "timer":
                self.stats["timers"] += 1
                await self.actor.on_timer(ctx)
            elif kind == "resume":
                if state is None:
                    return
                await self.actor.on_resume(ctx)
            else:
                await payload(ctx)
            await self._commit(ctx)
        except Exception:
            # The step's changes to the state object were not saved, and some of its messages may not
            # have been published: forget the cached copy so the retry starts from what is stored.
            self._store.drop(partition, intent_id)
            if raise_errors:
                raise  # a message: it is redelivered
            self.stats["failed"] += 1
            self.log.exception("actor_step_failed", intent_id=intent_id, step=kind)
            # A timer or venue event has no redelivery: wake the actor again so it reconciles from its
            # stored state (its on_timer re-checks deadlines, polls orders, retries what is pending).
            self._arm(intent_id, partition, self.clock.now_ns() + STEP_RETRY_NS)

    async def _commit(self, ctx: IntentContext[Any]) -> None:
        if ctx.deleted:
            await self._store.delete(ctx.partition, ctx.intent_id)
        elif ctx.dirty and ctx.state is not None:
            await self._store.save(ctx.partition, ctx.intent_id, ctx.state)
        if ctx.wake_at_ns is not None:
            self._arm(ctx.intent_id, ctx.partition, ctx.wake_at_ns)

    async def _publish(self, msg: Message) -> None:
        if not msg.ts_event:
            msg = msgspec.structs.replace(msg, ts_event=self.clock.now_ns())
        await self.bus.publish(msg)

    async def _reject(self, raw: Msg, error: InvalidMessage) -> None:
        self.stats["dead_lettered"] += 1
        await self.bus.dead_letter(self.actor.name, _live_subject(raw.subject), str(error), raw.data)
        try:
            await self.actor.on_invalid(_live_subject(raw.subject), raw.data, error, self._publish)
        except Exception:
            self.log.exception("on_invalid_failed", subject=raw.subject)
        await raw.ack()

    async def _failed(self, raw: Msg, exc: Exception) -> None:
        self.stats["failed"] += 1
        delivered = raw.metadata.num_delivered if raw.metadata else 1
        self.log.exception("handler_failed", subject=raw.subject, delivered=delivered, error=repr(exc))
        if delivered >= self._settings.max_deliveries:
            self.stats["dead_lettered"] += 1
            await self.bus.dead_letter(
                self.actor.name,
                _live_subject(raw.subject),
                f"handler failed {delivered} times: {exc!r}",
                raw.data,
            )
            await raw.term()
        else:
            await raw.nak(delay=min(0.05 * 2**delivered, 2.0))

    async def _claim_once(self, key: str, token: str) -> bool:
        """True for the first claimant of `key` (and for that same claimant again: same `token`)."""
        kv = self.bus.buckets.intents
        try:
            await kv.create(key, token.encode())
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await kv.get(key)
            return entry.value == token.encode()

    # -- timers -----------------------------------------------------------------------------------------

    def _arm(self, intent_id: str, partition: int, at_ns: int) -> None:
        if at_ns <= 0:
            self._timer_at.pop(intent_id, None)
            return
        self._timer_at[intent_id] = at_ns
        heapq.heappush(self._timers, (at_ns, intent_id, partition))
        self._timer_wakeup.set()

    async def _run_timers(self) -> None:
        while True:
            now = self.clock.now_ns()
            while self._timers and self._timers[0][0] <= now:
                at_ns, intent_id, partition = heapq.heappop(self._timers)
                if self._timer_at.get(intent_id) != at_ns:
                    continue  # replaced or canceled
                if partition in self._streams:
                    del self._timer_at[intent_id]
                    self._enqueue(intent_id, partition, ("timer", None))
                elif self._leases is not None and partition in self._leases.held:
                    # The partition is being taken over and its stream is still starting: keep the deadline.
                    self._arm(intent_id, partition, now + 50_000_000)
            self._timer_wakeup.clear()
            await self.clock.sleep_until(self.next_deadline(), self._timer_wakeup)

    def next_deadline(self) -> int | None:
        """The earliest armed timer (stale heap entries dropped), for simulation drivers and status."""
        while self._timers:
            at_ns, intent_id, _partition = self._timers[0]
            if self._timer_at.get(intent_id) == at_ns:
                return at_ns
            heapq.heappop(self._timers)
        return None

    # -- control ----------------------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        return {
            "actor": self.actor.name,
            "replica": self.replica,
            "partitions": self.partitions,
            "members": self._leases.members if self._leases else [],
            "intents_in_flight": len(self._queues),
            "timers": len(self._timer_at),
            "cached_states": self._store.cached,
            **self.stats,
            **self.actor.status(),
        }


def _check_routing(msg: Message, parts: subjects.SubjectParts) -> None:
    """The subject routes the message; a body that disagrees with it is refused, never guessed at."""
    for field, from_subject in (("intent_id", parts.intent_id), ("venue", parts.venue), ("symbol", parts.symbol)):
        if getattr(msg, field) != from_subject:
            raise InvalidMessage(
                field, f"`{field}` is {getattr(msg, field)!r} but the subject says {from_subject!r}"
            )


def _live_subject(stored: str) -> str:
    """Strip the partition token the stream appended."""
    parts = stored.split(".")
    return ".".join(parts[:5]) if len(parts) == 6 and parts[0] == subjects.PREFIX else stored

