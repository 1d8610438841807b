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
import collections
import gc
import heapq
import os
import time
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.actor import Actor, IntentContext, Services
from bus.bus import Bus
from bus.clock import Clock, WallClock
from bus.consumer import PullStream, ack_info
from bus.control import ControlService
from bus.msglog import read_stream  # the same reader as `execbus replay`
from bus.partitions import PartitionLeases
from bus.state import LeaseLapsed, StaleState, StateStore
from messages import BY_KIND, InvalidMessage, Message, decode_as, subjects

__all__ = ["ActorHost"]

STEP_RETRY_NS = 500_000_000
_Work = tuple[Any, ...]
"""("msg", Msg, partition it came from) | ("timer", None) | ("resume", None) | ("call", fn) | ("flush", None)"""


class _Slots:
    """A semaphore whose waiters can be told to stop waiting (`wake`): a step of a partition being released
    must not wait behind the other partitions' steps, as the release waits for it."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def take(self, excused: Callable[[], bool]) -> bool:
        """True once a slot is ours (`give` it back); False, without one, once `excused()` holds."""
        while not excused():
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self._waiters.remove(waiter)
                self._next()  # (a slot it was woken for goes to the next)
                raise
            self._waiters.remove(waiter)
            if self._free > 0 and not excused():
                self._free -= 1
                self._next()  # (more may be free: a wake let every waiter look)
                return True
        self._next()
        return False

    def give(self) -> None:
        self._free += 1
        self._next()

    def wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _next(self) -> None:
        if self._free > 0:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
                    return


class _Batch:
    """What an intent's steps did since its last commit."""

    __slots__ = ("messages", "sent", "unrepeatable", "staged", "flush")

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        """Handled, acknowledged after the commit."""
        self.sent: list[asyncio.Future[Any]] = []
        """JetStream acks of what the steps published."""
        self.unrepeatable = False
        """A timer, venue event or resume ran: no redelivery brings it back if the batch is lost."""
        self.staged = False
        """A step changed the state."""
        self.flush: asyncio.TimerHandle | None = None
        """The commit scheduled for when the batch has waited long enough for company."""

    @property
    def pending(self) -> bool:
        return bool(self.messages or self.sent or self.staged)

    def reset(self) -> None:
        self.messages.clear()
        self.sent.clear()
        self.unrepeatable = False
        self.staged = False
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None


class ActorHost:
    """Runs one actor replica on the bus."""

    def __init__(self, bus: Bus, actor: Actor[Any], *, clock: Clock | None = None, replica: str | None = None) -> None:
        self.bus = bus
        self.actor = actor
        self._produces = frozenset(actor.produces)
        self.clock = clock or WallClock()
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = structlog.get_logger("execbus.actor").bind(actor=actor.name, replica=self.replica)
        settings = bus.settings
        self._settings = settings
        self._store = StateStore(
            bus.js, bus.buckets.state, actor.name, actor.State, bus.acks, retired_ttl_s=settings.retired_state_ttl_s
        )
        self._streams: dict[int, PullStream] = {}
        self._in_hand: collections.Counter[int] = collections.Counter()
        """Partition -> its log messages queued here and not yet handled: the pull's back-pressure."""
        self._queues: dict[str, collections.deque[_Work]] = {}
        self._event_slots = _Slots(max(1, self._settings.event_steps))
        """Steps from outside the log (venue events, timers, resumes) running at once (`event_steps`): log
        messages are bounded by the pull's credit, these by this."""
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._intent_partition: dict[str, int] = {}
        self._batches: dict[str, _Batch] = {}
        """Intents whose handled messages wait for their commit (see `_work`)."""
        self._releasing: set[int] = set()
        self._held_back: dict[str, float] = {}
        """Intent -> monotonic time until which its abandoned messages are on their way back: newer ones
        wait for them (see `_abandon`)."""
        self._timers: list[tuple[int, str, int]] = []
        self._timer_at: dict[str, int] = {}
        self._timer_wakeup = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._leases: PartitionLeases | None = None
        self._control: ControlService | None = None
        self.stats = {"handled": 0, "dead_lettered": 0, "failed": 0, "timers": 0, "rebuilt": 0, "lapsed": 0}
        self._rebuilt: dict[int, set[str]] = {}
        """Per owned partition: intents already rebuilt from the log since we took the partition over."""
        self._taken_at_seq: dict[int, int] = {}
        """Per owned partition: the stream's last sequence when we took it over."""
        self._started = False
        self._activity = bus.activity
        if self._activity is not None:
            self._activity.add_consumer(self)

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> ActorHost:
        services = Services(
            self.clock, self.run_for_intent, self._publish, self.replica, self._claim_once, self._store.find,
            self._claim, controls=await self.bus.controls(), each_intent=self.for_each_intent,
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
        # What exists now (modules, venue markets, connections) lives as long as the process: keep it out
        # of the collector's full passes, which otherwise stall the loop for tens of milliseconds.
        gc.freeze()
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

    def queued(self, intent_id: str) -> int:
        """Work items waiting behind the one running for the intent."""
        return len(self._queues.get(intent_id, ()))

    def working(self, intent_id: str) -> bool:
        """A step of the intent is running (or about to)."""
        return intent_id in self._workers

    @property
    def partitions(self) -> list[int]:
        return self._leases.held if self._leases else []

    # -- partitions -------------------------------------------------------------------------------------

    async def _acquire(self, partition: int) -> None:
        durable = f"{self.actor.name}-p{partition}"
        config = ConsumerConfig(
            durable_name=durable,
            filter_subjects=[subjects.partition_filter(t.kind, partition, self.bus.shape) for t in self.actor.consumes],
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            ack_wait=self._settings.ack_wait_s,
            max_ack_pending=10_000,
            max_deliver=-1,
        )
        try:
            info = await self.bus.js.consumer_info(self._settings.stream, durable)
        except nats.js.errors.NotFoundError:
            await self.bus.js.add_consumer(self._settings.stream, config)
        else:
            had = info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else [])
            if sorted(had) != sorted(config.filter_subjects or []):
                # A new version consumes other kinds: the server updates the durable in place, keeping its
                # position, so nothing logged before is delivered twice. (A message of a newly consumed kind
                # that an older replica's pulls went past is not delivered: an upgrade that adds a kind stops
                # the older replicas of that actor first.)
                self.log.warning("consumer_filters_updated", consumer=durable,
                                 was=info.config.filter_subjects, now=config.filter_subjects)
                await self.bus.js.add_consumer(self._settings.stream, config)
        if self.actor.rebuilds():
            self._taken_at_seq[partition] = (await self.bus.js.stream_info(self._settings.stream)).state.last_seq
            self._rebuilt[partition] = set()
        for intent_id in await self._store.intents_in(partition):
            self._enqueue(intent_id, partition, ("resume", None))
        stream = PullStream(
            self.bus.nc,
            self._settings.stream,
            durable,
            lambda msg, p=partition: self._on_message(p, msg),
            batch=self._settings.fetch_batch,
            in_hand=lambda p=partition: self._in_hand[p],
        )
        await stream.start()
        self._streams[partition] = stream

    async def _release(self, partition: int) -> None:
        """Stop pulling, let the partition's intents finish what they took, commit what they hold, forget."""
        self._releasing.add(partition)
        self._event_slots.wake()  # (its steps waiting for a slot go now: the release must not wait behind others')
        try:
            for intent_id, batch in self._batches.items():
                if self._intent_partition.get(intent_id) == partition and batch.flush is not None:
                    batch.flush.cancel()  # committed below, not by a timer that could fire mid-release
                    batch.flush = None
            stream = self._streams.pop(partition, None)
            if stream is not None:
                await stream.stop()
            while draining := [w for i, w in self._workers.items() if self._intent_partition.get(i) == partition]:
                await asyncio.gather(*draining, return_exceptions=True)
            for intent_id in [i for i in self._batches if self._intent_partition.get(i) == partition]:
                batch = self._batches.pop(intent_id, None)
                if batch is not None:
                    try:
                        await self._commit(intent_id, partition, batch)
                    except Exception:  # the connection is going: its messages come back after the ack wait
                        self.log.exception("release_commit_failed", intent_id=intent_id)
            for intent_id in [i for i, p in self._intent_partition.items() if p == partition]:
                if intent_id not in self._workers:
                    self._intent_partition.pop(intent_id, None)
                    self._timer_at.pop(intent_id, None)
                    self._held_back.pop(intent_id, None)
            self._store.drop_partition(partition)
            self._in_hand.pop(partition, None)  # (a stream taken again starts counting afresh)
            self._rebuilt.pop(partition, None)  # whoever holds it next rebuilds from the log
            self._taken_at_seq.pop(partition, None)
        finally:
            self._releasing.discard(partition)

    # -- dispatch ---------------------------------------------------------------------------------------

    def _on_message(self, partition: int, msg: Msg) -> None:
        parts = subjects.parse(msg.subject, self.bus.shape)
        intent_id = parts.intent_id if parts else f"_unrouted.{msg.subject}"
        self._enqueue(intent_id, partition, ("msg", msg))

    def run_for_intent(
        self, intent_id: str, partition: int, fn: Callable[[IntentContext[Any]], Awaitable[None]]
    ) -> None:
        """Run `fn` in the intent's context, after the messages already queued for it."""
        self._enqueue(intent_id, partition, ("call", fn))

    def for_each_intent(self, fn: Callable[[IntentContext[Any]], Awaitable[None]]) -> int:
        """Run `fn` for every intent with state in the partitions we hold (an operator's halt reaching the
        intents already running). Returns how many were queued."""
        queued = 0
        for partition in self.partitions:
            if partition in self._releasing or partition not in self._streams:
                continue
            for intent_id in self._store.known_intents(partition):
                self._enqueue(intent_id, partition, ("call", fn))
                queued += 1
        return queued

    def _enqueue(self, intent_id: str, partition: int, work: _Work) -> None:
        if self._activity is not None:
            # A redelivery was counted when it first came: counting it again would hide a missing message.
            self._activity.begin(delivered=work[0] == "msg" and ack_info(work[1].reply).delivered == 1)
        if work[0] == "msg":
            # Counted against the partition it came from, which is not the intent's own after a rescale.
            self._in_hand[partition] += 1
            work = (*work, partition)
        queue = self._queues.get(intent_id)
        if queue is None:
            queue = self._queues[intent_id] = collections.deque()
            self._intent_partition[intent_id] = partition
            self._workers[intent_id] = asyncio.create_task(self._work(intent_id, partition, queue))
        queue.append(work)

    async def _work(self, intent_id: str, partition: int, queue: collections.deque[_Work]) -> None:
        """One task per intent with queued work; it ends when the queue is empty.

        Steps run back to back on the cached state. Their commit — every message they published confirmed
        stored, then the state written once, then the handled messages acknowledged — waits up to
        `flush_delay_s` for more of the intent's steps: an execution's messages come in a burst, and the
        whole burst then costs one state write (none, when the intent starts and ends inside it). What the
        steps publish goes out at once; only the bookkeeping waits."""
        batch = self._batches.pop(intent_id, None) or _Batch()
        # This task runs in its own copy of the context: what is bound here stays with this intent's work.
        structlog.contextvars.bind_contextvars(intent_id=intent_id)
        try:
            while queue:
                item = queue.popleft()
                kind, payload = item[0], item[1]
                try:
                    if kind == "msg":
                        await self._handle_message(intent_id, partition, payload, batch)
                    elif kind == "flush":
                        batch.flush = None
                        await self._commit(intent_id, partition, batch)
                    elif await self._event_slots.take(lambda: partition in self._releasing):
                        try:
                            await self._run_step(intent_id, partition, kind, payload, batch)
                        finally:
                            self._event_slots.give()
                    else:  # its partition is being let go: the release waits for it, not behind the others
                        await self._run_step(intent_id, partition, kind, payload, batch)
                    if not queue and batch.pending:
                        await self._commit_later(intent_id, partition, batch)
                except Exception:
                    # The runtime's own bookkeeping failed (an ack or nak on a closing connection): keep
                    # the worker alive; unacknowledged messages come back after the ack wait.
                    self.log.exception("runtime_step_error", intent_id=intent_id, step=kind)
                    self._store.drop(partition, intent_id)
                    _retrieve_all(batch.sent)
                    batch.reset()
                finally:
                    if kind == "msg":
                        self._handed_back(item[2], 1)
                    if self._activity is not None:
                        self._activity.end()
        finally:
            self._queues.pop(intent_id, None)
            self._workers.pop(intent_id, None)
            if batch.pending:
                self._batches[intent_id] = batch
            elif intent_id not in self._timer_at and intent_id not in self._held_back:
                # Nothing of it left here for a release to find: an entry per intent ever handled would grow
                # without end (a day of intents, six actors).
                self._intent_partition.pop(intent_id, None)

    def _handed_back(self, partition: int, n: int) -> None:
        """`n` of the partition's messages are handled (or handed back): its stream may pull again."""
        if n <= 0 or partition not in self._in_hand:
            return
        left = self._in_hand[partition] = self._in_hand[partition] - n
        if left <= 0:
            del self._in_hand[partition]
        stream = self._streams.get(partition)
        if stream is not None:
            stream.refill()

    async def _commit_later(self, intent_id: str, partition: int, batch: _Batch) -> None:
        delay = self._settings.flush_delay_s
        if delay <= 0 or partition not in self._streams or partition in self._releasing or not self._started:
            await self._commit(intent_id, partition, batch)
        elif batch.flush is None:
            batch.flush = asyncio.get_running_loop().call_later(
                delay, self._enqueue, intent_id, partition, ("flush", None)
            )

    async def _handle_message(self, intent_id: str, partition: int, raw: Msg, batch: _Batch) -> None:
        until = self._held_back.get(intent_id)
        if until is not None:
            wait = until - time.monotonic()
            if wait <= 0:
                del self._held_back[intent_id]
            elif ack_info(raw.reply).delivered == 1:
                await raw.nak(delay=wait + 0.01)  # newer than what is coming back: after it, in log order
                return
        parts = subjects.parse(raw.subject, self.bus.shape)
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
        info = ack_info(raw.reply)
        try:
            await self._run_step(intent_id, partition, "msg", msg, batch, seq=info.stream_seq, delivered=info.delivered)
        except Exception as exc:
            await self._abandon(intent_id, partition, batch, exc, failed=raw)
        else:
            batch.messages.append(raw)

    async def _run_step(
        self, intent_id: str, partition: int, kind: str, payload: Any, batch: _Batch, *, seq: int = 0, delivered: int = 1
    ) -> None:
        """One step on the cached state. A failing message step raises (the caller abandons the batch); a
        failing timer or venue-event step abandons the batch here."""
        state = await self._store.load(partition, intent_id)
        ctx: IntentContext[Any] = IntentContext(
            intent_id, partition, state, self._send, self.clock, self.log.bind(intent_id=intent_id)
        )
        ctx.message_seq = seq
        ctx.delivered = delivered
        ctx.epoch = self._leases.epoch(partition) if self._leases is not None else 0
        if self._leases is not None:
            leases = self._leases
            ctx.owner_valid = lambda: leases.valid(partition)
            ctx.owner_unexpired = lambda: leases.unexpired(partition)
        if kind != "msg":
            batch.unrepeatable = True
        try:
            # A replica whose lease renewals stalled may already have lost the partition to a replica that
            # takes its messages: acting now would be a second owner acting on half the messages.
            ctx.ensure_owner()
            if self._must_rebuild(intent_id, partition, kind, payload, seq, delivered, state):
                state = await self._rebuild(intent_id, partition, state, ctx)
                if kind == "resume":
                    kind = "rebuilt"  # `_rebuild` ran on_resume already
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
            elif kind == "rebuilt":
                pass
            else:
                await payload(ctx)
        except Exception as exc:
            batch.sent.extend(ctx.sent)
            if kind == "msg":
                raise
            await self._abandon(intent_id, partition, batch, exc)
            return
        batch.sent.extend(ctx.sent)
        if ctx.deleted:
            self._store.stage(partition, intent_id, None)
            batch.staged = True
        elif ctx.dirty and ctx.state is not None:
            self._store.stage(partition, intent_id, ctx.state, retire=ctx.retired)
            batch.staged = True
        if ctx.wake_at_ns is not None:
            self._arm(intent_id, partition, ctx.wake_at_ns)

    async def _commit(self, intent_id: str, partition: int, batch: _Batch) -> None:
        """Published messages stored, then the state, then the acks: a crash anywhere in between
        redelivers the messages, and their handlers publish nothing twice (deterministic ids)."""
        try:
            if batch.sent:
                await asyncio.gather(*batch.sent)
            await self._store.flush(partition, intent_id)
        except Exception as exc:
            await self._abandon(intent_id, partition, batch, exc)
            return
        for raw in batch.messages:
            await raw.ack()
        batch.reset()

    async def _abandon(
        self, intent_id: str, partition: int, batch: _Batch, exc: Exception, *, failed: Msg | None = None
    ) -> None:
        """A step, a publish or the state write failed: nothing of this batch is kept. The cached state may
        hold the batch's unsaved changes, so it is dropped. The batch's messages, the failed one and those
        queued behind it are handed back in log order with one delay (backing off with their delivery
        count), and newer messages of the intent wait until they are back; a message whose own handler
        failed `max_deliveries` times is dead-lettered instead. Timers and venue events (which have no
        redelivery) are replayed by waking the actor to reconcile from its stored state."""
        # Everything up to the first await is decided at once, so a message arriving meanwhile is held back.
        self._store.drop(partition, intent_id)
        _retrieve_all(batch.sent)  # never cancel: a message already sent may still be stored and delivered
        stale = isinstance(exc, StaleState)
        if partition in self._rebuilt:
            # What the lost steps published is in the log but not in any state: the stored snapshot is older
            # than the log (and with StaleState, someone else wrote it since we read it). The next step
            # rebuilds from the log again, so a command that comes back meets what was said of it.
            self._rebuilt[partition].discard(intent_id)
        returning = [*batch.messages, *([failed] if failed is not None else [])]
        delivered = max((ack_info(m.reply).delivered for m in returning), default=1)
        # A lapsed lease is renewed or lost within a renewal interval: the message comes back after that.
        lapsed = isinstance(exc, LeaseLapsed)
        delay = self._settings.lease_ttl_s / 3 if lapsed else 0.1 if stale else min(0.05 * 2**delivered, 2.0)
        failed_times = ack_info(failed.reply).delivered if failed is not None else 0
        # Only a message its handler keeps failing on is dead-lettered: a lease that lapsed, a state another
        # owner wrote, or the bus itself timing out (a nats-server restarting) says nothing about the message,
        # which waits for the bus to come back however long that takes.
        dead = (
            failed is not None and not stale and not lapsed and not _bus_failure(exc)
            and failed_times >= self._settings.max_deliveries
        )
        if dead:
            returning.remove(failed)  # type: ignore[arg-type]
        returning += self._take_queued_messages(intent_id)
        if returning:
            self._held_back[intent_id] = time.monotonic() + delay
        self.stats["failed"] += 1
        if lapsed:
            self.stats["lapsed"] += 1
            self.log.warning("step_skipped_lease_lapsed", intent_id=intent_id, partition=partition, returned=len(returning))
        elif failed is not None and not stale:
            self.log.error("handler_failed", subject=failed.subject, delivered=failed_times, error=repr(exc), exc_info=exc)
        else:
            self.log.error("actor_step_failed", intent_id=intent_id, error=repr(exc), exc_info=exc)
        if dead:
            await self._dead_letter(failed, f"handler failed {failed_times} times: {exc!r}")  # type: ignore[arg-type]
        for raw in returning:
            await raw.nak(delay=delay)
        if batch.unrepeatable or failed is None:
            # A timer or venue event has no redelivery: wake the actor again so it reconciles from its
            # stored state (its on_timer re-checks deadlines, polls orders, retries what is pending). If
            # the partition has moved on meanwhile, the timer is dropped (`_run_timers`).
            self._arm(intent_id, partition, self.clock.now_ns() + STEP_RETRY_NS)
        batch.reset()

    def _take_queued_messages(self, intent_id: str) -> list[Msg]:
        """Remove the intent's queued log messages (other work stays queued)."""
        queue = self._queues.get(intent_id)
        if queue is None:
            return []
        items = list(queue)
        queue.clear()
        messages = [item[1] for item in items if item[0] == "msg"]
        queue.extend(item for item in items if item[0] != "msg")
        for item in items:
            if item[0] == "msg":
                self._handed_back(item[2], 1)
        if self._activity is not None:
            for _ in messages:
                self._activity.end()
        return messages

    async def _send(self, msg: Message, epoch: int = 0) -> asyncio.Future[Any]:
        if type(msg) not in self._produces:
            # A bug, not bad input: the declaration is what the bus's permissions are made of.
            raise TypeError(f"{self.actor.name} publishes {type(msg).__name__}, which it does not declare in `produces`")
        if epoch and not msg.epoch:
            rederive = {"msg_id": ""} if type(msg).epoch_in_id else {}  # (replace runs __post_init__ again)
            msg = msgspec.structs.replace(msg, ts_event=msg.ts_event or self.clock.now_ns(), epoch=epoch, **rederive)
        elif not msg.ts_event:
            msg = msgspec.structs.replace(msg, ts_event=self.clock.now_ns())
        return await self.bus.send(msg)

    # -- takeover: the log is the truth ---------------------------------------------------------------------

    def _must_rebuild(
        self, intent_id: str, partition: int, kind: str, payload: Any, seq: int, delivered: int, state: Any
    ) -> bool:
        """The first step of an intent after this replica took its partition over rebuilds it from the log,
        unless the step is the intent's very beginning: a first delivery, newer than the takeover, of a
        message that starts an intent, with nothing stored."""
        rebuilt = self._rebuilt.get(partition)
        if rebuilt is None or intent_id in rebuilt or not self.actor.rebuilds():
            return False
        if state is not None and self.actor.settled(state):
            rebuilt.add(intent_id)
            return False
        if (
            kind == "msg"
            and state is None
            and delivered == 1
            and seq > self._taken_at_seq.get(partition, 0)
            and isinstance(payload, self.actor.begins_intent)
        ):
            rebuilt.add(intent_id)
            return False
        return True

    async def _rebuild(self, intent_id: str, partition: int, stored: Any, ctx: IntentContext[Any]) -> Any:
        """Replace the snapshot with what the intent's messages in the log imply, and stage it: the write
        (with this owner's epoch in it) moves the key's revision, so a stale owner's next write is refused."""
        history: list[tuple[int, Message]] = []
        async for record in read_stream(self.bus, f"{subjects.PREFIX}.*.*.*.{intent_id}", stream=self._settings.stream):
            try:
                history.append((record.seq, record.message()))
            except Exception:  # a record that does not decode was dead-lettered when it arrived
                continue
        state = await self.actor.rebuild(history, stored, ctx)
        self._rebuilt.setdefault(partition, set()).add(intent_id)
        self.stats["rebuilt"] += 1
        self.log.info("intent_rebuilt_from_log", intent_id=intent_id, messages=len(history), had_snapshot=stored is not None)
        if state is None:
            if stored is not None:
                ctx.forget()
            return None
        ctx.save(state)
        await self.actor.on_resume(ctx)  # act on what is due: a reaction the dead owner never sent
        return ctx.state

    async def _publish(self, msg: Message) -> None:
        await (await self._send(msg))

    async def _reject(self, raw: Msg, error: InvalidMessage) -> None:
        self.stats["dead_lettered"] += 1
        await self.bus.dead_letter(self.actor.name, subjects.live_of(raw.subject, self.bus.shape), str(error), raw.data)
        try:
            await self.actor.on_invalid(subjects.live_of(raw.subject, self.bus.shape), raw.data, error, self._publish)
        except Exception:
            self.log.exception("on_invalid_failed", subject=raw.subject)
        await raw.ack()

    async def _dead_letter(self, raw: Msg, reason: str) -> None:
        self.stats["dead_lettered"] += 1
        await self.bus.dead_letter(self.actor.name, subjects.live_of(raw.subject, self.bus.shape), reason, raw.data)
        await raw.term()

    async def _claim(
        self, key: str, token: str, *, replacing: str | None = None, expires: bool = True
    ) -> tuple[str, bool]:
        """Claim `key` for `token`, durably (JetStream KV; with `expires`, the claim goes after
        `retired_state_ttl_s`). Returns (holder, taken now): `holder` is `token` if the claim is ours, and
        `taken now` says we took it in this call — only then is it proof that nobody had it before. With
        `replacing`, a claim still held by that token is taken over (compare-and-set, so of two replicas
        replacing it only one wins)."""
        kv = self.bus.buckets.intents
        subject = f"$KV.{kv._name}.{key}"
        ttl = {"Nats-TTL": str(max(int(self._settings.retired_state_ttl_s), 1))} if expires else {}
        try:
            # KV create = a write that expects no earlier value, sent through the ack mux like every write: the
            # common case (a first claim) costs this one round trip.
            await self.bus.acks.publish(subject, token.encode(), {"Nats-Expected-Last-Subject-Sequence": "0", **ttl})
            return token, True
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await kv.get(key)
        holder = (entry.value or b"").decode()
        if replacing is None or holder != replacing:
            return holder, False
        try:
            expected = {"Nats-Expected-Last-Subject-Sequence": str(entry.revision), **ttl}
            await self.bus.acks.publish(subject, token.encode(), expected)
            return token, True
        except nats.js.errors.KeyWrongLastSequenceError:
            return (await kv.get(key)).value.decode(), False

    async def _claim_once(self, key: str, token: str) -> bool:
        """True for the first claimant of `key` (and for that same claimant again: same `token`). Kept for
        good: an intent id is executed once, however late it comes back."""
        holder, _taken = await self._claim(key, token, expires=False)
        return holder == token

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
                else:  # no longer ours: its owner has the deadline (from the state); nothing of it stays here
                    del self._timer_at[intent_id]
                    if intent_id not in self._workers and intent_id not in self._batches:
                        self._intent_partition.pop(intent_id, None)
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
            "unflushed": len(self._batches),
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



def _retrieve_all(futures: list[asyncio.Future[Any]]) -> None:
    """Consume the outcome of acks nobody awaits any more, so asyncio does not report them as lost."""
    for future in futures:
        future.add_done_callback(lambda f: f.cancelled() or f.exception())


def _bus_failure(exc: BaseException) -> bool:
    """The step failed on the bus (a NATS or JetStream timeout, a connection lost), not on its message."""
    return isinstance(exc, (nats.errors.Error, asyncio.TimeoutError, ConnectionError))
