"""What an actor is, as the runtime sees it.

An actor declares the message types it consumes and, optionally, a per-intent `State` struct. The runtime
calls `handle(msg, ctx)` for each message of an intent, one at a time and in log order; `ctx` carries that
intent's state (loaded from JetStream KV), a `publish` that puts messages into the log, and `wake_at`
for absolute-deadline timers. After the handler returns the runtime confirms its messages are stored, saves
the state, then acknowledges the message (several of an intent's messages queued together share one save):
a crash anywhere in between replays the message, and since every published message has a deterministic id
the replay publishes nothing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import msgspec
import structlog

from bus.clock import Clock
from bus.state import LeaseLapsed
from messages import InvalidMessage, Message

__all__ = ["Actor", "IntentContext", "Publisher", "Services"]

S = TypeVar("S", bound=msgspec.Struct)


class Publisher(Protocol):
    async def __call__(self, msg: Message) -> None: ...


class Sender(Protocol):
    async def __call__(self, msg: Message, epoch: int = 0) -> asyncio.Future[Any]: ...


class IntentContext(Generic[S]):
    """One intent as one actor sees it while handling one message."""

    def __init__(
        self,
        intent_id: str,
        partition: int,
        state: S | None,
        send: Sender,
        clock: Clock,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.intent_id = intent_id
        self.partition = partition
        self.state: S | None = state
        self._send = send
        self.sent: list[asyncio.Future[Any]] = []
        """Acks of what this step published; the runtime waits for them before it saves the state."""
        self.clock = clock
        self.log = log
        self.dirty = False
        self.deleted = False
        self.retired = False
        self.wake_at_ns: int | None = None
        self.message_seq = 0
        """Stream sequence of the message being handled (0 for timers and venue events)."""
        self.delivered = 1
        """How often the message being handled has been delivered: above 1, an earlier delivery may have
        acted (sent a request to a venue) and died before its outcome was recorded."""
        self.epoch = 0
        """Lease epoch of the intent's partition at this replica; stamped on everything it publishes."""
        self.owner_valid: Callable[[], bool] = _always
        """Whether this replica still holds the intent's partition for certain (see `ensure_owner`)."""
        self.owner_unexpired: Callable[[], bool] = _always
        """Whether no other replica can hold the partition yet (checked by `publish`)."""

    def ensure_owner(self) -> None:
        """Raise `LeaseLapsed` unless this replica still holds the intent's partition for certain. The runtime
        checks before every step; call it again right before an act that cannot be taken back (money to a
        venue, a refusal) when the step has awaited something slow since it began. The runtime hands the
        message back; its next owner handles it."""
        if not self.owner_valid():
            raise LeaseLapsed(f"partition {self.partition} lease no longer certain")

    async def publish(self, msg: Message) -> None:
        """Put `msg` into the log. It is on its way when this returns; the runtime makes sure JetStream
        stored it before the state is saved and the input acknowledged.

        Not from a step that outlived its lease (a venue call that hung for seconds): it must not speak for
        the intent after the next owner has — its messages' ids are deterministic, so its copy would be the
        one the log keeps. (The stricter `ensure_owner` is the step's start and the last check before money
        moves.)"""
        if not self.owner_unexpired():
            raise LeaseLapsed(f"partition {self.partition} lease expired while the step ran")
        self.sent.append(await self._send(msg, self.epoch))

    def save(self, state: S) -> None:
        """Keep `state` for this intent (written to KV after the handler, before the ack)."""
        self.state = state
        self.dirty = True
        self.deleted = False

    def retire(self, state: S) -> None:
        """Save `state` as this intent's last: kept in KV for `retired_state_ttl_s` (read back if another
        message of the intent comes), not in memory."""
        self.save(state)
        self.retired = True

    def forget(self) -> None:
        """This actor is done with the intent: drop its state and timers."""
        self.state = None
        self.deleted = True
        self.dirty = False
        self.wake_at_ns = 0

    def wake_at(self, at_ns: int) -> None:
        """Call `on_timer` for this intent at absolute time `at_ns` (replaces an earlier request)."""
        self.wake_at_ns = at_ns


class Services:
    """What the runtime offers an actor beyond its contexts."""

    def __init__(
        self,
        clock: Clock,
        run_for_intent: Callable[[str, int, Callable[[IntentContext[Any]], Awaitable[None]]], None],
        publish: Publisher,
        replica: str,
        claim_once: Callable[[str, str], Awaitable[bool]],
        find_state: Callable[[str], Awaitable[Any]],
        claim: Callable[..., Awaitable[tuple[str, bool]]] | None = None,
        *,
        controls: Any = None,
        each_intent: Callable[[Callable[[IntentContext[Any]], Awaitable[None]]], int] | None = None,
    ) -> None:
        self.controls = controls
        """The operator's controls (`bus.controls.ControlStore`): trading states, risk limits, reservations,
        the order-rate budget. None outside the runtime."""
        self.each_intent = each_intent
        """`each_intent(fn)`: run `fn` in the context of every intent this replica owns and has state for
        (behind what is queued for each); returns how many were queued."""
        self.claim = claim
        """`await claim(key, token, replacing=None)`: a durable claim on `key`; returns (holder, taken now). Only
        a claim taken now proves nobody held it. With `replacing=holder`, a claim that holder still has is taken
        over, by one replica only."""
        self.find_state = find_state
        """This actor's stored state of any intent (not only in owned partitions), or None."""
        self.clock = clock
        self.claim_once = claim_once
        """Durable first-wins guard (JetStream KV `create`): the intent-id check beyond the duplicate window."""
        self.run_for_intent = run_for_intent
        """Queue work for an intent behind its messages (e.g. a venue event for one of its orders)."""
        self.publish = publish
        self.replica = replica


class Actor(Generic[S]):
    """Base class: override what you need. Actors never import each other and never touch nats-py."""

    name: ClassVar[str] = ""
    consumes: ClassVar[tuple[type[Message], ...]] = ()
    produces: ClassVar[tuple[type[Message], ...]] = ()
    """Every message kind this actor publishes. The runtime refuses to publish any other, and the bus
    permissions (`execbus nats-config`) are derived from it: the server refuses them too."""
    claims: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Keys this actor writes in the shared buckets, by bucket (`intents`, `controls`) and key prefix, e.g.
    {"intents": ("intent",)} for `intent.<id>` claims. Its own state and lease keys need no declaration. The
    bus permissions allow these and no other key: an actor cannot resume a halted venue or pre-claim an id."""
    moves_money: ClassVar[bool] = False
    """Creates or cancels orders at a venue. Only such an actor may send the paper venue those requests."""
    State: ClassVar[type[msgspec.Struct] | None] = None

    async def start(self, services: Services) -> None:
        """Open venues, start background watchers."""

    async def stop(self) -> None:
        """Close what `start` opened."""

    async def handle(self, msg: Message, ctx: IntentContext[S]) -> None:
        raise NotImplementedError

    async def on_timer(self, ctx: IntentContext[S]) -> None:
        """A deadline requested with `ctx.wake_at` has come."""

    async def on_resume(self, ctx: IntentContext[S]) -> None:
        """This replica took over the intent's partition (start-up or failover): re-arm timers, re-watch."""

    #: Message kinds that begin an intent: a first delivery of one of these, newer than the takeover, for an
    #: intent with nothing stored, needs no history.
    begins_intent: ClassVar[tuple[type[Message], ...]] = ()

    async def rebuild(self, history: list[tuple[int, Message]], stored: S | None, ctx: IntentContext[S]) -> S | None:
        """Override to make the log the truth: this replica has just taken the intent over, and `history`
        is every message of the intent in the `EXEC` stream, oldest first, as (stream sequence, message).
        Return the state those messages imply (`stored` is the KV snapshot, possibly stale). Called before
        anything else of the intent is handled, timers included; `on_resume` follows, to act on what is due.
        The default keeps the snapshot."""
        return stored

    def settled(self, stored: S) -> bool:
        """A stored state that needs no rebuild (the intent is over for this actor)."""
        return False

    @classmethod
    def rebuilds(cls) -> bool:
        return cls.rebuild is not Actor.rebuild

    async def on_invalid(self, subject: str, raw: bytes, error: InvalidMessage, publish: Publisher) -> None:
        """A message on one of our subjects did not decode. It is already dead-lettered."""

    def endpoints(self) -> dict[str, Callable[[bytes], Awaitable[bytes]]]:
        """Extra request/reply endpoints, served at `execbus.ctl.<actor>.<name>`."""
        return {}

    def status(self) -> dict[str, Any]:
        """Extra fields for the `status` endpoint of this actor's micro service."""
        return {}


def _always() -> bool:
    return True
